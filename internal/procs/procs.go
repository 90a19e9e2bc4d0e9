// Package procs holds what the packages that run server processes for
// tests and benches (natsproc, pgproc, cmd/node's process clusters) share:
// loopback ports that stay theirs across restarts, the tail of a log file,
// and reading a server's JSON over HTTP.
package procs

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// A server keeps its ports while it is down, so that a restarted server is
// found where its clients and peers look for it. A port that the kernel
// hands out for ":0" listeners or outgoing connections could be taken by
// someone else in that window; so the ports come from below the kernel's
// ephemeral range, which only programs that name a port use.
const (
	// lowestPort is well above the well-known and common service ports.
	lowestPort = 20000
	// defaultEphemeralLow is Linux's default start of the ephemeral range.
	defaultEphemeralLow = 32768
)

// issued holds every port this process handed out, so that two servers of
// one process (a NATS cluster and a PostgreSQL server, say) never share
// one, even while both are down.
var issued = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// PickPorts returns n distinct loopback TCP ports that are free now and
// that this process has not handed out before.
func PickPorts(n int) ([]int, error) {
	hi := ephemeralLow()
	issued.Lock()
	defer issued.Unlock()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 1000 {
			return nil, fmt.Errorf("no %d free ports in [%d, %d) after %d tries", n, lowestPort, hi, tries)
		}
		p := lowestPort + rand.IntN(hi-lowestPort)
		if issued.ports[p] || !portFree(p) {
			continue
		}
		issued.ports[p] = true
		ports = append(ports, p)
	}
	return ports, nil
}

// portFree reports whether a listener can bind 127.0.0.1:p now.
func portFree(p int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// ephemeralLow is the first port of the kernel's ephemeral range, or Linux's
// default where it cannot be read or leaves no room below it.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return defaultEphemeralLow
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return defaultEphemeralLow
	}
	low, err := strconv.Atoi(f[0])
	if err != nil || low < lowestPort+1000 {
		return defaultEphemeralLow
	}
	return low
}

// ReadTail reads up to limit bytes from the end of the file at path.
func ReadTail(path string, limit int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(0, st.Size()-int64(limit))
	b := make([]byte, st.Size()-off)
	n, err := f.ReadAt(b, off)
	if err != nil && n < len(b) {
		return nil, err
	}
	return b[:n], nil
}

// ExitText describes a process's exit from the error cmd.Wait returned.
func ExitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.String()
	}
	return err.Error()
}
