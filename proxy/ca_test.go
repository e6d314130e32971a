package proxy

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
)

func TestCACreateReloadAndLeafCache(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := LoadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca key mode %v %v", fi.Mode(), err)
	}
	again, err := LoadOrCreateCA(dir)
	if err != nil || !again.Cert.Equal(ca.Cert) {
		t.Fatalf("second start made a new CA: %v", err)
	}
	var hits, misses int
	ca.OnCache = func(hit bool) {
		if hit {
			hits++
		} else {
			misses++
		}
	}
	ca.max = 2
	l1, err := ca.Leaf("a.test")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := l1.Leaf.Verify(x509.VerifyOptions{DNSName: "a.test", Roots: pool}); err != nil {
		t.Fatalf("leaf does not verify: %v", err)
	}
	_, _ = ca.Leaf("a.test")
	_, _ = ca.Leaf("b.test")
	_, _ = ca.Leaf("c.test") // evicts a.test
	if l, _ := ca.Leaf("a.test"); l == l1 {
		t.Fatal("cache grew past its bound")
	}
	if hits != 1 || misses != 4 || ca.lru.Len() != 2 {
		t.Fatalf("hits %d misses %d size %d", hits, misses, ca.lru.Len())
	}
	if _, err := ParseCA([]byte("junk"), []byte("junk")); err == nil {
		t.Fatal("junk CA accepted")
	}
}
