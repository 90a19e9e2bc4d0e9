package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/eddyrt/eddy"
)

// status prints what a running node knows, read from its HTTP API: its
// partitions (/v1/status) and, when it is a cluster member, the members,
// the Raft leader and term, and the assignment with replica lags (/v1/cluster).
func (c *cli) status(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node status", flag.ContinueOnError)
	addr := fs.String("http", eddy.DefaultConfig().HTTPAddr, "`address` (or URL) of the node's HTTP API")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the node")
	if err := c.parse(fs, args); err != nil {
		return err
	}
	base := strings.TrimSuffix(*addr, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var body struct {
		Node       string                 `json:"node"`
		Partitions []eddy.PartitionStatus `json:"partitions"`
		Error      string                 `json:"error"`
	}
	code, err := getJSON(ctx, base+"/v1/status", &body)
	if err != nil {
		return err
	}
	var cl eddy.ClusterStatus
	clCode, err := getJSON(ctx, base+"/v1/cluster", &cl)
	if err != nil {
		return err
	}
	if clCode == http.StatusOK {
		printCluster(c.stdout, cl)
		fmt.Fprintln(c.stdout)
	}
	if body.Node != "" {
		fmt.Fprintf(c.stdout, "partition actors on node %s\n", body.Node)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tPARTITION\tSTATE\tEPOCH\tOFFSET\tINPUT LAG\tLAST COMMIT\tCHANGELOG SEQ\tSNAPSHOT")
	now := time.Now()
	var troubled []eddy.PartitionStatus
	for _, p := range body.Partitions {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%s\t%d\t%s\n", p.Type, p.Partition, stateSince(string(p.State), p.Since, now),
			p.Epoch, p.Offset, p.InputLag, ago(p.LastCommit, now), p.ChangelogSeq, snapshotCell(p.Snapshot, now))
		if p.Err != "" {
			troubled = append(troubled, p)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, p := range troubled {
		fmt.Fprintf(c.stdout, "%s/%d %s: %s\n", p.Type, p.Partition, p.State, p.Err)
	}
	if code != http.StatusOK {
		if body.Error == "" {
			body.Error = http.StatusText(code)
		}
		return fmt.Errorf("node answered %d: %s", code, body.Error)
	}
	return nil
}

// getJSON GETs url into v and returns the status code; a body that is not
// JSON is an error.
func getJSON(ctx context.Context, url string, v any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return resp.StatusCode, fmt.Errorf("%s: %s: %w", url, resp.Status, err)
	}
	return resp.StatusCode, nil
}

// printCluster prints members, leader and the assignment table.
func printCluster(w io.Writer, cl eddy.ClusterStatus) {
	leader := cl.Leader
	if leader == "" {
		leader = "(none known)"
	}
	fmt.Fprintf(w, "cluster as node %s sees it: Raft leader %s, term %d\n", cl.Node, leader, cl.Term)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tGOSSIP\tASSIGNOR\tZONE\tGOSSIP ADDR\tRAFT ADDR\tHTTP ADDR")
	for _, m := range cl.Members {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.State, dash(m.Assigned), dash(m.Zone), m.Gossip, dash(m.Raft), dash(m.HTTP))
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tPARTITION\tACTIVE\tEPOCH\tSTATE\tINPUT LAG\tLAST COMMIT\tREPLICAS (LAG: RECORDS, TIME)\tMOVING TO")
	now := time.Now()
	var troubled []eddy.AssignmentStatus
	for _, p := range cl.Partitions {
		var rs []string
		for _, r := range p.Replicas {
			lag := "?"
			if r.Reported {
				lag = fmt.Sprint(r.LagRecords)
				if r.Behind > 0 {
					lag += ", " + r.Behind.Round(time.Millisecond).String()
				}
			}
			rs = append(rs, fmt.Sprintf("%s (%s)", r.Node, lag))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%d\t%s\t%s\t%s\n", p.Type, p.Partition, dash(p.Active), p.Epoch, dash(p.State),
			p.InputLag, ago(p.LastCommit, now), dash(strings.Join(rs, " ")), dash(p.MovingTo))
		if p.Err != "" || p.GivenBack != "" || len(p.Avoid) > 0 {
			troubled = append(troubled, p)
		}
	}
	_ = tw.Flush()
	for _, p := range troubled {
		if p.GivenBack != "" {
			fmt.Fprintf(w, "%s/%d given back by %s: %s\n", p.Type, p.Partition, p.Active, p.GivenBack)
		}
		if p.Err != "" {
			fmt.Fprintf(w, "%s/%d %s on %s: %s\n", p.Type, p.Partition, p.State, p.Active, p.Err)
		}
		if len(p.Avoid) > 0 {
			fmt.Fprintf(w, "%s/%d is not placed on %s until they restart (they gave it back)\n", p.Type, p.Partition, strings.Join(p.Avoid, ", "))
		}
	}
}

// stateSince is a partition's state, with how long it has lasted when it
// is not running.
func stateSince(state string, since, now time.Time) string {
	if state == "running" || since.IsZero() {
		return state
	}
	return state + " (" + now.Sub(since).Round(time.Second).String() + ")"
}

// ago says how long before now t was: "-" for never.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return now.Sub(t).Round(time.Millisecond).String() + " ago"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// snapshotCell shows a partition's newest snapshot: its changelog sequence
// and age, "restored" if the actor restored from it; "-" for none.
func snapshotCell(s *eddy.SnapshotStatus, now time.Time) string {
	if s == nil {
		return "-"
	}
	cell := fmt.Sprintf("%d (%s)", s.ChangelogSeq, ago(s.Created, now))
	if s.Restored {
		cell += " restored"
	}
	return cell
}
