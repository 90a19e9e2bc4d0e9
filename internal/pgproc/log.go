package pgproc

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/eddyrt/eddy/internal/procs"
)

// serverLog is a server's log file, which initdb and postgres write their
// output to and this package marks each start, signal and exit in, copied
// line by line to Config.Logf if that is set. It lives from Start to Close.
type serverLog struct {
	path   string
	f      *os.File // opened O_APPEND: the children's writes and ours interleave whole
	prefix string   // before each line given to logf, naming the server

	mu      sync.Mutex // serializes Write: the copying goroutines of exec and mark
	logf    func(format string, a ...any)
	partial []byte // the start of a line not yet ended, for logf
}

func openLog(path string, port int, logf func(string, ...any)) (*serverLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &serverLog{path: path, f: f, prefix: fmt.Sprintf("pg:%d| ", port), logf: logf}, nil
}

// output is what a child's stdout and stderr are set to: the file itself
// when there is no logf, so that the child writes to it with no goroutine
// of ours in between, else the log, which exec feeds through a pipe.
func (l *serverLog) output() io.Writer {
	if l.logf == nil {
		return l.f
	}
	return l
}

// Write appends p to the file and hands each line it ends to logf.
func (l *serverLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.f.Write(p)
	if l.logf != nil {
		l.partial = append(l.partial, p...)
		for {
			i := bytes.IndexByte(l.partial, '\n')
			if i < 0 {
				break
			}
			l.logf("%s%s", l.prefix, l.partial[:i])
			l.partial = l.partial[i+1:]
		}
	}
	return n, err
}

// mark writes a line of this package's own, so that the log shows where a
// process was started, signalled and reaped.
func (l *serverLog) mark(format string, a ...any) {
	fmt.Fprintf(l, "=== pgproc %s: %s\n", time.Now().Format("15:04:05.000000"), fmt.Sprintf(format, a...))
}

// close hands an unended last line to logf and closes the file; the log must
// get no more writes.
func (l *serverLog) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.logf != nil && len(l.partial) > 0 {
		l.logf("%s%s", l.prefix, l.partial)
		l.partial = nil
	}
	return l.f.Close()
}

// tail returns up to limit bytes from the end of the log file.
func (l *serverLog) tail(limit int) string {
	b, err := procs.ReadTail(l.path, limit)
	if err != nil {
		return fmt.Sprintf("(log %s: %v)", l.path, err)
	}
	return fmt.Sprintf("--- %s, last %d bytes:\n%s", l.path, len(b), b)
}
