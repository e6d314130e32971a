// Package testutil holds the few helpers several packages' tests share, so
// that each exists once; it is imported only from _test.go files and never
// by paddock's own code.
package testutil
