package pgproc

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// A server keeps its port across Stop and Restart, so that clients find it
// where they looked before. A port that the kernel hands out for ":0"
// listeners or outgoing connections could be taken by someone else in that
// window; so ports come from below the kernel's ephemeral range, which only
// programs that name a port use (natsproc picks its ports the same way).
const (
	// lowestPort is well above the well-known and common service ports.
	lowestPort = 20000
	// defaultEphemeralLow is Linux's default start of the ephemeral range.
	defaultEphemeralLow = 32768
)

// issued holds every port this process handed out, so that two servers of
// one test binary never share one, even while both are stopped.
var issued = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// pickPort returns a loopback TCP port that is free now and that this
// process has not handed out before.
func pickPort() (int, error) {
	hi := ephemeralLow()
	issued.Lock()
	defer issued.Unlock()
	for range 1000 {
		p := lowestPort + rand.IntN(hi-lowestPort)
		if issued.ports[p] || !portFree(p) {
			continue
		}
		issued.ports[p] = true
		return p, nil
	}
	return 0, fmt.Errorf("no free port in [%d, %d) after 1000 tries", lowestPort, hi)
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
