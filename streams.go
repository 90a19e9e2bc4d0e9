package eddy

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/eddyrt/eddy/changelog"
	"github.com/eddyrt/eddy/partition"
)

// ensureStreams makes the streams of the registered actor types exist as
// eddy needs them, within the wait w: each type's input and dead-letter
// streams, the output streams, and the changelogs that exist already (the
// partition actors create the missing ones). Each step is retried while
// JetStream answers with a transient error (a stream leader being elected,
// a cluster member down); a stream that exists with a config eddy cannot use
// fails at once, naming the field.
func (n *Node) ensureStreams(ctx context.Context, w *natsWait, nc *nats.Conn, js jetstream.JetStream) error {
	sopt := partition.StreamOptions{Replicas: n.cfg.StreamReplicas, Duplicates: n.cfg.DuplicateWindow, Log: n.log}
	cl := changelog.DefaultStreamConfig()
	cl.Replicas = n.cfg.StreamReplicas
	ensure := func(waitFor string, op func(ctx context.Context) error) error {
		return w.run(ctx, step{
			waitFor: waitFor,
			timeout: streamOpTimeout,
			op:      op,
			fatal:   func(err error) (string, bool) { return jsFatal(nc, err) },
		})
	}
	for _, name := range n.order {
		t := n.types[name]
		err := ensure("JetStream to create input stream "+t.Name, func(ctx context.Context) error {
			return partition.EnsureInputStream(ctx, js, t.input(), sopt)
		})
		if err != nil {
			return err
		}
		dlq := partition.DLQStream(t.Name)
		err = ensure("JetStream to create dead-letter stream "+dlq, func(ctx context.Context) error {
			return partition.EnsureStream(ctx, js, dlq, []string{partition.DLQSubject(t.Name)}, sopt)
		})
		if err != nil {
			return err
		}
		err = ensure("JetStream to check the changelogs of "+t.Name, func(ctx context.Context) error {
			return changelog.CheckStreams(ctx, js, t.Name, t.Partitions, cl, n.log)
		})
		if err != nil {
			return err
		}
	}
	n.tableInputs = map[string]partition.Input{}
	for _, name := range n.order {
		t := n.types[name]
		for _, tb := range t.Tables {
			err := ensure("JetStream to create table stream "+tb, func(ctx context.Context) error {
				if err := partition.EnsureTableStream(ctx, js, partition.Input{Type: tb, Partitions: t.Partitions, KeyedSubjects: true}, sopt); err != nil {
					return fmt.Errorf("table %s of actor type %s (%d partitions): %w", tb, t.Name, t.Partitions, err)
				}
				st, err := js.Stream(ctx, tb)
				if err != nil {
					return err
				}
				cfg := st.CachedInfo().Config
				in, ok := partition.InputOf(cfg)
				if !ok || in.Partitions != t.Partitions {
					return fmt.Errorf("%w: table %s of actor type %s: the stream has %d partitions (%v), the type %d",
						ErrIncompatibleStream, tb, t.Name, in.Partitions, ok, t.Partitions)
				}
				if cfg.MaxMsgsPerSubject != 1 && n.tableInputs[tb].Type == "" {
					n.log.Warn("a table's stream keeps every record, not the latest of each key: a partition restored from the whole changelog holds them all, and the stream grows",
						"table", tb, "messages", st.CachedInfo().State.Msgs)
				}
				n.tableInputs[tb] = in
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	for _, name := range n.globalOrder {
		t := n.globalTypes[name]
		err := ensure("JetStream to create table stream "+name, func(ctx context.Context) error {
			return partition.EnsureTableStream(ctx, js, t.input(), sopt)
		})
		if err != nil {
			return err
		}
		dlq := partition.DLQStream(name)
		err = ensure("JetStream to create dead-letter stream "+dlq, func(ctx context.Context) error {
			return partition.EnsureStream(ctx, js, dlq, []string{partition.DLQSubject(name)}, sopt)
		})
		if err != nil {
			return err
		}
	}
	for _, name := range n.order {
		for _, o := range n.types[name].Outputs {
			if n.types[o] != nil || n.globalTypes[o] != nil {
				continue // another actor type's input stream, or a table's
			}
			err := ensure("JetStream to create output stream "+o, func(ctx context.Context) error {
				return partition.EnsureStream(ctx, js, o, []string{o + ".*"}, sopt)
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}
