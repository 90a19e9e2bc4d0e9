package pgproc_test

import (
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/eddyrt/eddy/internal/pgproc"
)

func TestZZScratch(t *testing.T) {
	g0 := runtime.NumGoroutine()
	for _, durable := range []bool{false, false, true} {
		for _, logf := range []func(string, ...any){nil, t.Logf} {
			st := time.Now()
			s, err := pgproc.Start(pgproc.Config{Durable: durable, Logf: logf})
			if err != nil {
				t.Fatal(err)
			}
			d := time.Since(st)
			st = time.Now()
			if err := s.Stop(); err != nil {
				t.Fatal(err)
			}
			ds := time.Since(st)
			st = time.Now()
			if err := s.Restart(); err != nil {
				t.Fatal(err)
			}
			dr := time.Since(st)
			st = time.Now()
			s.Crash()
			dc := time.Since(st)
			s.Restart()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			t.Logf("durable=%v logf=%v start %v stop %v restart %v crash %v; goroutines %d -> %d", durable, logf != nil, d, ds, dr, dc, g0, runtime.NumGoroutine())
		}
	}
	if os.Getenv("HANG") != "" {
		s, err := pgproc.Start(pgproc.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("started port %d dir %s", s.Port(), s.Dir())
		time.Sleep(time.Hour)
	}
}
