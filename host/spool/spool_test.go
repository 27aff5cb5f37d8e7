package spool

import (
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
)

func TestEntryLifecycle(t *testing.T) {
	d := Dir{Path: t.TempDir()}
	e, err := d.Create(Meta{URL: "https://g", JobID: 5, Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"hello ", "world\n"} {
		if _, err := e.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	sum, size := e.Summary()
	if size != 12 || sum != fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE([]byte("hello world\n"))) {
		t.Errorf("%s %d", sum, size)
	}
	// A live entry is no orphan.
	if o, err := d.Orphans(); err != nil || len(o) != 0 {
		t.Fatalf("orphans of a live entry: %v %v", o, err)
	}
	if err := e.SetAcked(6); err != nil {
		t.Fatal(err)
	}
	if err := e.SetFinal(Final{State: "failed", FailureReason: "script_failure", ExitCode: 3}); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(e.Path())
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("entry mode %v", fi.Mode())
	}
	e.Close() // the process "dies": the entry stays, unlocked
	o, err := d.Orphans()
	if err != nil || len(o) != 1 {
		t.Fatalf("orphans: %v %v", o, err)
	}
	r := o[0]
	m := r.Meta()
	if m.JobID != 5 || m.Token != "tok" || m.Final == nil || m.Final.ExitCode != 3 || r.Acked() != 6 {
		t.Errorf("resumed %+v acked %d", m, r.Acked())
	}
	if s2, n2 := r.Summary(); s2 != sum || n2 != size {
		t.Errorf("resumed summary %s %d", s2, n2)
	}
	buf := make([]byte, 6)
	if _, err := r.ReadAt(buf, 6); err != nil || string(buf) != "world\n" {
		t.Errorf("%q %v", buf, err)
	}
	// Held by this resume: no second orphan.
	if o2, _ := d.Orphans(); len(o2) != 0 {
		t.Errorf("an entry being resumed is an orphan again")
	}
	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(d.Path); len(left) != 0 {
		t.Errorf("left %v", left)
	}
	// An entry whose creator died before writing meta.json is dropped.
	os.MkdirAll(filepath.Join(d.Path, "7-x"), 0o700)
	if o, err := d.Orphans(); err != nil || len(o) != 0 {
		t.Errorf("%v %v", o, err)
	}
}
