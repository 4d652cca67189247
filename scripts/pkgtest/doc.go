// Package pkgtest builds the Debian packages (`make package`,
// scripts/package.sh) and checks them as dpkg would install them: control
// fields, contents and modes, conffiles, maintainer scripts that never
// delete data, lintian, the packaged configuration, and `systemd-analyze
// verify` on the units inside the extracted package. It has no code of its
// own; see its _test.go files.
package pkgtest
