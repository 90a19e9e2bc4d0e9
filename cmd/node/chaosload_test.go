package main

import (
	"context"

	"github.com/eddyrt/eddy/internal/workload"
)

// stateGetter reads the nodes' HTTP API for workload.ReadState through the
// nodes in ids: key i's attempt try goes to ids[(i+try) % len(ids)], so
// reads spread over the nodes and a retry goes to the next one.
func (pc *procCluster) stateGetter(ids []string) workload.Getter {
	return func(ctx context.Context, i, try int, path string, v any) error {
		return pc.getJSON(ctx, ids[(i+try)%len(ids)], path, v)
	}
}
