// Package eddy is a runtime for stateful stream processing with actors.
//
// Register actor types on a Node. Each actor type reads an input stream of the
// same name, split into partitions by key; one partition actor per partition
// runs the handler for every event, against a local state store whose every
// change is recorded in a changelog stream on NATS JetStream. Processing is
// effectively-once: after any crash, each event's effects (state changes,
// emitted messages, sends to other actors) are present exactly once.
//
// The files of this package name its concepts: node.go (Node: register,
// start, stop), actortype.go, context.go (what a handler sees), client.go,
// query.go (how a read finds the owner), staleread.go (reads from hot
// replicas), reconcile.go (what runs on a node), handover.go (where a
// partition moves), giveback.go, cluster.go, control.go (requests between
// nodes), status.go, http.go, natsconn.go and streams.go. The commit
// protocol is in partition/, the changelog in changelog/, the assignor in
// cluster/. docs/architecture.md maps them; ExampleNode shows a node in a few lines.
package eddy
