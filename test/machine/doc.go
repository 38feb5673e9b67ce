// Package machine tests the nodetrust packages on booted Debian machines:
// a systemd-nspawn container (seconds) for the unit and the maintainer
// scripts of the .deb and .rpm, and one QEMU (TCG) virtual machine with a
// real kernel for the boot path. Both boot a cached debootstrap root file
// system; see docs/vm-e2e.md.
//
// The tests need root and the tools that `make deps` installs; elsewhere
// each skips with one line saying what is missing.
package machine
