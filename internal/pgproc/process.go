package pgproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/eddyrt/eddy/internal/procs"
)

const (
	// readyPoll is how often Start and Restart try to connect: postgres
	// accepts connections 0.1-0.3 s after it starts here, and a refused
	// connection costs next to nothing.
	readyPoll = 20 * time.Millisecond
	// probeTimeout bounds one connection attempt: a healthy server answers
	// in milliseconds, and a port held by something that accepts and never
	// answers must not hold the wait.
	probeTimeout = 2 * time.Second
	// pipeDelay bounds how long reaping the postmaster waits for the pipe to
	// Config.Logf to drain: backends left by a postmaster that was SIGKILLed
	// alone keep it open until they notice, within a second.
	pipeDelay = 5 * time.Second
)

// process is one run of postgres. Its wait goroutine (owned by the Server's
// WaitGroup) records how it ended and then cancels alive.
type process struct {
	cmd   *exec.Cmd
	alive context.Context // done once the process has exited and been reaped
	err   error           // cmd.Wait's result; read only after alive is done
}

// exited reports whether the process has ended.
func (p *process) exited() bool { return p.alive.Err() != nil }

// running reports whether s has a live postmaster. Callers hold s.mu.
func (s *Server) running() bool { return s.proc != nil && !s.proc.exited() }

// command prepares a run of the binary name from s's bin directory, as the
// user s runs as, in a process group of its own, writing to s's log.
func (s *Server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, name), args...)
	// The working directory is inherited otherwise, and the user postgres
	// may not be allowed into the test's.
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = s.log.output(), s.log.output()
	cmd.SysProcAttr = sysProcAttr(s.cred)
	// Only initdb's context can end: kill it and the postgres --single it
	// runs, its process group.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = pipeDelay
	return cmd
}

// initdb creates the data directory: superuser postgres, trusted on every
// connection, UTF8 with the C locale (whatever locales the machine has, and
// byte order for text), and without fsync unless Durable.
func (s *Server) initdb() error {
	args := []string{"-D", s.dataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"}
	if !s.durable {
		args = append(args, "--no-sync")
	}
	ctx, cancel := context.WithTimeout(context.Background(), initdbTimeout)
	defer cancel()
	cmd := s.command(ctx, "initdb", args...)
	s.log.mark("running %s", cmd)
	start := time.Now()
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w after %v", err, initdbTimeout)
		}
		return fmt.Errorf("initdb: %w\n%s", err, s.log.tail(4096))
	}
	s.log.mark("initdb done in %v", time.Since(start).Round(time.Millisecond))
	return nil
}

// launch starts postgres and waits until it is ready; if it does not become
// ready, it is stopped. Callers hold s.mu.
func (s *Server) launch() error {
	args := []string{"-D", s.dataDir, "-p", strconv.Itoa(s.port), "-k", s.dir,
		"-c", "listen_addresses=127.0.0.1"}
	if !s.durable {
		args = append(args, "-c", "fsync=off", "-c", "full_page_writes=off")
	}
	// The postmaster outlives any context of a call; Stop and Crash end it.
	cmd := s.command(context.Background(), "postgres", args...)
	s.log.mark("starting %s", cmd)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	alive, exit := context.WithCancel(context.Background())
	p := &process{cmd: cmd, alive: alive}
	s.proc = p
	s.wg.Go(func() {
		p.err = cmd.Wait()
		s.log.mark("pid %d exited: %s", cmd.Process.Pid, procs.ExitText(p.err))
		exit()
	})
	if err := s.awaitReady(p); err != nil {
		tail := s.log.tail(4096)
		return errors.Join(fmt.Errorf("start postgres on port %d: %w\n%s", s.port, err, tail), s.stop(syscall.SIGQUIT))
	}
	s.log.mark("pid %d ready in %v", cmd.Process.Pid, time.Since(start).Round(time.Millisecond))
	return nil
}

// awaitReady tries to connect to p's server until it succeeds, p exits, or
// startTimeout passes.
func (s *Server) awaitReady(p *process) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.probe(p)
		if err == nil || errors.Is(err, errOtherServer) {
			return err
		}
		if p.exited() {
			return fmt.Errorf("exited before accepting connections: %s", procs.ExitText(p.err))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no connection within %v: %w", startTimeout, err)
		}
		select {
		case <-p.alive.Done():
		case <-time.After(readyPoll):
		}
	}
}

// errOtherServer: the server's port is served by another PostgreSQL.
var errOtherServer = errors.New("another server holds the port")

// probe connects to the database postgres and checks that the server there
// is p's (its data directory is s's), within probeTimeout or until p exits.
func (s *Server) probe(p *process) error {
	ctx, cancel := context.WithTimeout(p.alive, probeTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var dataDir string
	if err := conn.QueryRow(ctx, "SELECT current_setting('data_directory')").Scan(&dataDir); err != nil {
		return err
	}
	if dataDir != s.dataDir {
		return fmt.Errorf("%w: its data directory is %s", errOtherServer, dataDir)
	}
	return nil
}

// stop sends sig to the postmaster (SIGINT: fast shutdown, SIGQUIT:
// immediate) and waits until it has exited and its wait goroutine ended,
// SIGKILLing it and its children after stopTimeout. A fast shutdown that
// ends in a failure is an error; an immediate one's exit status is not
// looked at. Callers hold s.mu.
func (s *Server) stop(sig syscall.Signal) error {
	defer s.wg.Wait()
	if !s.running() {
		return nil
	}
	p := s.proc
	pid := p.cmd.Process.Pid
	s.log.mark("%v to pid %d", sig, pid)
	if err := p.cmd.Process.Signal(sig); err != nil && !p.exited() {
		return fmt.Errorf("signal postgres: %w", err)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.alive.Done():
		if sig == syscall.SIGINT && p.err != nil {
			return fmt.Errorf("stop postgres: %s\n%s", procs.ExitText(p.err), s.log.tail(4096))
		}
		return nil
	case <-timer.C:
	}
	s.log.mark("SIGKILL to pid %d and its children: running %v after %v", pid, stopTimeout, sig)
	killAll(pid)
	<-p.alive.Done()
	return fmt.Errorf("%w (%v): killed after %v", ErrStopTimeout, sig, stopTimeout)
}

// killAll SIGKILLs the postmaster pid and every process it started. Those
// are no members of its process group: each child makes itself a session
// leader (setsid). So they are found by their parent pid in /proc, with the
// postmaster stopped (SIGSTOP) meanwhile, so that it forks no more and
// reaps none whose pid could then be reused. Where there is no /proc, only
// the postmaster is killed; its children exit when they notice, unless
// they hang.
func killAll(pid int) {
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	for _, c := range childrenOf(pid) {
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// childrenOf lists the processes whose parent is pid, from /proc/*/stat.
// (/proc/PID/task/PID/children would be quicker, but kernels built without
// CONFIG_PROC_CHILDREN, as this machine's, lack it.)
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var kids []int
	for _, e := range entries {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(b[i+1:])
		if len(f) >= 2 && string(f[1]) == strconv.Itoa(pid) {
			kids = append(kids, c)
		}
	}
	return kids
}
