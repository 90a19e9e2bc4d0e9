package testkit

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
)

// recordTB is a testing.TB whose Log and Cleanup are recorded, and whose Log
// panics once the cleanups ran, as testing.T's does once a test and its
// parents are done.
type recordTB struct {
	testing.TB
	mu       sync.Mutex
	lines    []string
	cleanups []func()
	done     bool
}

func (r *recordTB) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }

func (r *recordTB) Log(args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		panic("Log in goroutine after the test has completed: " + fmt.Sprint(args...))
	}
	r.lines = append(r.lines, fmt.Sprint(args...))
}

// end runs the cleanups, last registered first, and ends the test.
func (r *recordTB) end() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	r.mu.Lock()
	r.done = true
	r.mu.Unlock()
}

func TestLogWriterForwardsLinesUntilCleanup(t *testing.T) {
	r := &recordTB{TB: t}
	w := LogWriter(r)
	fmt.Fprintln(w, "first")
	fmt.Fprint(w, "second\n\n")
	r.end()
	if n, err := fmt.Fprintln(w, "after the end"); n != len("after the end\n") || err != nil {
		t.Fatalf("write after the end: %d, %v; want all of it taken", n, err)
	}
	if got := strings.Join(r.lines, "|"); got != "first|second" {
		t.Fatalf("logged %q, want the two lines before the end, trailing newlines trimmed", got)
	}
}

// Goroutines that keep logging while the test ends neither panic nor race
// with it (run with -race): each line is logged before the cleanup or
// dropped after it.
func TestLogWriterWhileTheTestEnds(t *testing.T) {
	r := &recordTB{TB: t}
	log := slog.New(slog.NewTextHandler(LogWriter(r), nil))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				log.Info("tick", "goroutine", g, "i", i)
			}
		})
	}
	for {
		r.mu.Lock()
		n := len(r.lines)
		r.mu.Unlock()
		if n >= 100 {
			break
		}
	}
	r.end()
	close(stop)
	wg.Wait()
}

func TestLoggerLevels(t *testing.T) {
	r := &recordTB{TB: t}
	Logger(r).Debug("debug line")
	LoggerAt(r, slog.LevelInfo).Debug("dropped")
	LoggerAt(r, slog.LevelInfo).Info("info line", "k", 1)
	r.end()
	if len(r.lines) != 2 || !strings.Contains(r.lines[0], "level=DEBUG msg=\"debug line\"") ||
		!strings.Contains(r.lines[1], "level=INFO msg=\"info line\" k=1") {
		t.Fatalf("logged %q", r.lines)
	}
}

// afterAll is closed by TestMain once every test has ended; lateWriters are
// the goroutines that write then.
var (
	afterAll    = make(chan struct{})
	lateWriters sync.WaitGroup
)

// A goroutine that writes after its test and every other has ended — the
// moment testing.T's Log panics — drops the line: TestMain makes it write
// then and waits for it, and a panic would fail the test binary.
func TestLogWriterAfterEveryTestEnded(t *testing.T) {
	w := LogWriter(t)
	log := Logger(t)
	fmt.Fprintln(w, "logged while the test runs")
	lateWriters.Go(func() {
		<-afterAll
		fmt.Fprintln(w, "written after every test ended")
		log.Info("logged after every test ended")
	})
}

func TestMain(m *testing.M) {
	code := m.Run()
	close(afterAll)
	lateWriters.Wait()
	os.Exit(code)
}
