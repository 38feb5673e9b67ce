module github.com/nodetrust/nodetrust

go 1.26
