#!/bin/sh
# Installs the Debian packages the machine tests (test/machine) and the
# package checks need: `make deps` runs it, and so does `make test`.
# As root it apt-get installs the missing ones; as another user it installs
# nothing and says in one line which tests will skip. Quiet and fast (one
# dpkg-query) when everything is present.
set -eu

want="qemu-system-x86 qemu-utils debootstrap systemd-container linux-image-amd64 lintian rpmlint rpm busybox-static e2fsprogs"

installed() {
	dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed
}

missing=""
for p in $want; do
	# busybox (dynamic) provides the same /bin/busybox; it conflicts with
	# busybox-static, so don't replace it.
	if [ "$p" = busybox-static ] && installed busybox; then
		continue
	fi
	installed "$p" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "deps: not root, so not installing$missing; the machine tests (test/machine) will skip"
	exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "deps: installing$missing"
# A clean machine may have no package lists yet, or stale ones.
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
	apt-get update -qq
fi
# shellcheck disable=SC2086 # one word per package
if ! apt-get install -y -qq --no-install-recommends $missing >/dev/null; then
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
