package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/eddyrt/eddy"
)

// status prints the partitions of a running node, read from its /v1/status.
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/status", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Node       string                 `json:"node"`
		Partitions []eddy.PartitionStatus `json:"partitions"`
		Error      string                 `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("%s/v1/status: %s: %w", base, resp.Status, err)
	}
	if body.Node != "" {
		fmt.Fprintf(c.stdout, "node %s\n", body.Node)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tPARTITION\tEPOCH\tOFFSET\tCHANGELOG SEQ")
	for _, p := range body.Partitions {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\n", p.Type, p.Partition, p.Epoch, p.Offset, p.ChangelogSeq)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		if body.Error == "" {
			body.Error = resp.Status
		}
		return fmt.Errorf("node answered %s: %s", resp.Status, body.Error)
	}
	return nil
}
