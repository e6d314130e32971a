// Package deploy holds no code: it is the node-install material (systemd
// unit, sysusers.d and tmpfiles.d files, Kubernetes manifests, README.md "Install on a node")
// and the tests that run `make install` and the manifests against what the
// operator will see.
package deploy
