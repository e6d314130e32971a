// Package conflist installs the paddock plugin into a node's CNI
// configuration and takes it out again: it chains a paddock entry onto an
// existing network's conflist, or writes a standalone paddock conflist. The
// edits are byte splices into the file as the operator wrote it, so key
// order, unknown fields and formatting survive, and an uninstall after an
// install gives back the original bytes. Files are replaced atomically (temp
// file, same mode and owner, rename) because runtimes watch the directory.
package conflist
