package natsproc

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/eddyrt/eddy/internal/procs"
)

// server is one nats-server of a Cluster: its fixed identity (name, ports,
// files) and, once started, its latest process. mu serializes the operations
// on it (start, kill, stop, pause), each held for the whole operation.
type server struct {
	name     string
	ports    serverPorts
	confPath string
	storeDir string
	logPath  string

	mu     sync.Mutex
	proc   *process // nil until the first start
	paused bool     // SIGSTOPped and not yet SIGCONTinued
}

// process is one run of a server's binary. Its wait goroutine (owned by the
// Cluster's WaitGroup) records how it ended and closes done.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and been reaped
	err  error         // cmd.Wait's result; read only after done
	// stopped is set, under server.mu, before Kill or Stop signals the
	// process: its exit is then expected, not a crash.
	stopped bool
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// running reports whether s has a live process. Callers hold s.mu.
func (s *server) running() bool { return s.proc != nil && !s.proc.exited() }

// start writes s's config and starts its process, then waits until it accepts
// client connections as itself (the INFO a client gets names s) or exits.
// Callers hold s.mu.
func (c *Cluster) start(s *server) error {
	if s.running() {
		return fmt.Errorf("start %s: %w", s.name, ErrRunning)
	}
	conf := renderConf(c.cfg, c.ports, c.index[s.name], s.storeDir)
	if err := os.WriteFile(s.confPath, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("start %s: %w", s.name, err)
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: %w", s.name, err)
	}
	cmd := exec.Command(c.bin, "-c", s.confPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	mark(logf, "starting %s -c %s", c.bin, s.confPath)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", s.name, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	s.proc, s.paused = p, false
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		p.err = cmd.Wait()
		mark(logf, "pid %d exited: %v", cmd.Process.Pid, procs.ExitText(p.err))
		logf.Close()
		close(p.done)
	}()
	if err := c.awaitListening(s, p); err != nil {
		p.stopped = true
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("start %s: %w\n%s", s.name, err, c.tail(s, 4096))
	}
	return nil
}

// awaitListening polls s's client port until the server there sends an INFO
// naming s, p exits, or Config.StartTimeout passes.
func (c *Cluster) awaitListening(s *server, p *process) error {
	deadline := time.Now().Add(c.cfg.StartTimeout)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.ports.client))
	var last error
	for {
		if p.exited() {
			return fmt.Errorf("exited before accepting clients: %s", procs.ExitText(p.err))
		}
		name, err := infoServerName(addr)
		switch {
		case err == nil && name == s.name:
			return nil
		case err == nil:
			// Another program holds our port; ours will fail to bind.
			return fmt.Errorf("%s is served by %q, not by this process", addr, name)
		}
		last = err
		if time.Now().After(deadline) {
			return fmt.Errorf("not accepting clients on %s within %v: %w", addr, c.cfg.StartTimeout, last)
		}
		select {
		case <-p.done:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// infoServerName connects to a NATS client port and returns the server_name
// of the INFO the server greets every client with.
func infoServerName(addr string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read INFO from %s: %w", addr, err)
	}
	rest, ok := strings.CutPrefix(line, "INFO ")
	if !ok {
		return "", fmt.Errorf("%s greeted with %q, not INFO", addr, line)
	}
	var info struct {
		Name string `json:"server_name"`
	}
	if err := json.Unmarshal([]byte(rest), &info); err != nil {
		return "", fmt.Errorf("INFO from %s: %w", addr, err)
	}
	return info.Name, nil
}

// kill SIGKILLs s's process and waits until it has exited. Callers hold s.mu.
func (c *Cluster) kill(s *server) error {
	if !s.running() {
		return nil
	}
	p := s.proc
	p.stopped = true
	c.mark(s, "SIGKILL pid %d", p.cmd.Process.Pid)
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !p.exited() {
		return fmt.Errorf("kill %s: %w", s.name, err)
	}
	<-p.done
	s.paused = false
	return nil
}

// stop SIGTERMs s's process (SIGCONTinuing it if paused, so that it can act
// on the signal) and waits until it has exited, sending SIGKILL after
// Config.StopTimeout. Callers hold s.mu.
func (c *Cluster) stop(s *server) error {
	if !s.running() {
		return nil
	}
	p := s.proc
	p.stopped = true
	pid := p.cmd.Process.Pid
	c.mark(s, "SIGTERM pid %d", pid)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !p.exited() {
		return fmt.Errorf("stop %s: %w", s.name, err)
	}
	if s.paused {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		s.paused = false
	}
	timer := time.NewTimer(c.cfg.StopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("stop %s: %w", s.name, p.err)
		}
		return nil
	case <-timer.C:
	}
	c.mark(s, "SIGKILL pid %d: still running %v after SIGTERM", pid, c.cfg.StopTimeout)
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("stop %s: %w: killed after %v", s.name, ErrStopTimeout, c.cfg.StopTimeout)
}

// signal sends sig to s's running process. Callers hold s.mu.
func (s *server) signal(sig syscall.Signal) error {
	if !s.running() {
		return ErrNotRunning
	}
	if err := s.proc.cmd.Process.Signal(sig); err != nil {
		return err
	}
	return nil
}

// crashErr says how s's process ended if it exited without Kill or Stop, and
// is nil otherwise. Callers hold s.mu.
func (s *server) crashErr() error {
	if s.proc == nil || !s.proc.exited() || s.proc.stopped {
		return nil
	}
	return fmt.Errorf("%s: %w: %s", s.name, ErrExited, procs.ExitText(s.proc.err))
}

// mark appends a line of this package's own to s's log, so that the log shows
// where a process was started, signalled and reaped.
func (c *Cluster) mark(s *server, format string, args ...any) {
	f, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	mark(f, format, args...)
}

func mark(f *os.File, format string, args ...any) {
	fmt.Fprintf(f, "=== natsproc %s: %s\n", time.Now().Format("15:04:05.000000"), fmt.Sprintf(format, args...))
}

// tail returns up to limit bytes from the end of s's log, headed by its name.
func (c *Cluster) tail(s *server, limit int) string {
	b, err := procs.ReadTail(s.logPath, limit)
	if err != nil {
		return fmt.Sprintf("(log %s: %v)", s.logPath, err)
	}
	return fmt.Sprintf("--- %s (%s), last %d bytes:\n%s", s.name, filepath.Base(s.logPath), len(b), b)
}
