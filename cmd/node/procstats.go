package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// What a process and a directory cost, as `node bench memory` reports it:
// resident memory from /proc (Linux), a gauge from a Prometheus endpoint,
// and the disk a directory takes.

// residentBytes is the resident set size of process pid (VmRSS in
// /proc/<pid>/status): what the process holds in RAM, heap, stacks, mapped
// files and the Go runtime's unreturned pages alike.
func residentBytes(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS of pid %d: %w", pid, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("pid %d: no VmRSS in /proc/%d/status", pid, pid)
}

// scrapeGauge reads the value of an unlabelled metric from a Prometheus
// text endpoint, such as go_memstats_heap_inuse_bytes from a node's /metrics.
func scrapeGauge(ctx context.Context, url, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", url, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s: no metric %s", url, name)
}

// diskUsage is the disk the files under dir take: allocated, as du counts
// it (preallocated and sparse files count by the blocks they hold; the
// apparent size where the file system reports no blocks), and apparent, the
// sum of the files' sizes.
func diskUsage(dir string) (allocated, apparent int64, err error) {
	err = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed since the directory was read (a compaction, a rotated block)
		}
		if err != nil {
			return err
		}
		if !d.IsDir() {
			apparent += info.Size()
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			allocated += st.Blocks * 512
		} else if !d.IsDir() {
			allocated += info.Size()
		}
		return nil
	})
	return allocated, apparent, err
}

// inMB is bytes in MiB, for printing.
func inMB(n int64) float64 { return float64(n) / (1 << 20) }
