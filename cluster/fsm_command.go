package cluster

import (
	"bytes"
	"fmt"
	"strconv"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// CommandType is the leading byte of an encoded command in the Raft log.
type CommandType uint8

const (
	// CommandRegisterType registers an actor type (RegisterType).
	CommandRegisterType CommandType = iota + 1
	// CommandNodeUp records an alive node (NodeUp).
	CommandNodeUp
	// CommandNodeDown records a node that stopped answering (NodeDown).
	CommandNodeDown
	// CommandNodeLeave records a node that left gracefully (NodeLeave).
	CommandNodeLeave
	// CommandForgetNode drops a gone node that holds nothing (ForgetNode).
	CommandForgetNode
	// CommandAssign applies a batch of partition changes (Assign).
	CommandAssign
	// CommandReportLag records hot replicas' lag (ReportLag).
	CommandReportLag
	// CommandGiveBack records that a partition's active owner gave it back (GiveBack).
	CommandGiveBack
	// CommandGiveBackReplica records that a node gave back its hot replica
	// of a partition (GiveBackReplica).
	CommandGiveBackReplica
)

func (t CommandType) String() string {
	switch t {
	case CommandRegisterType:
		return "RegisterType"
	case CommandNodeUp:
		return "NodeUp"
	case CommandNodeDown:
		return "NodeDown"
	case CommandNodeLeave:
		return "NodeLeave"
	case CommandForgetNode:
		return "ForgetNode"
	case CommandAssign:
		return "Assign"
	case CommandReportLag:
		return "ReportLag"
	case CommandGiveBack:
		return "GiveBack"
	case CommandGiveBackReplica:
		return "GiveBackReplica"
	}
	return "CommandType(" + strconv.Itoa(int(t)) + ")"
}

// Command is a change of the assignment, applied through the Raft log.
// EncodeCommand turns one into the bytes to pass to raft.Apply.
type Command interface {
	commandType() CommandType
	validate() error
}

// RegisterType registers an actor type, or changes the replication factor of
// a registered one. The partition count of a registered type cannot change
// (ErrTypeConflict): its input stream is split by it.
type RegisterType struct {
	Type ActorType `msgpack:"t"`
}

// NodeUp records that a node is alive (joined, came back, restarted, or
// changed its zone or addresses). A NodeUp whose Incarnation is older (less)
// than the one recorded for the node comes from a process that has since
// restarted; it is refused with ErrStale.
type NodeUp struct {
	ID       string `msgpack:"id"`
	Zone     string `msgpack:"z,omitempty"`
	RaftAddr string `msgpack:"ra,omitempty"`
	HTTPAddr string `msgpack:"ha,omitempty"`
	// Incarnation is the node process's NodeMeta.Incarnation.
	Incarnation uint64 `msgpack:"inc,omitempty"`
}

// NodeDown records that gossip declared a node dead.
type NodeDown struct {
	ID string `msgpack:"id"`
}

// NodeLeave records that a node left gracefully.
type NodeLeave struct {
	ID string `msgpack:"id"`
}

// ForgetNode removes a node that is not alive and holds no active partition
// or replica (ErrStale otherwise), so that the node list does not grow forever.
type ForgetNode struct {
	ID string `msgpack:"id"`
}

// Assign applies a batch of partition changes, all or none: if any change is
// stale (its expected epoch or version differs from the partition's, or it
// names a node that is no longer alive) the whole batch is rejected with
// ErrStale and the assignor plans again.
type Assign struct {
	Changes []Change `msgpack:"c"`
}

// ReportLag records how far behind the changelog a node's hot replicas are.
// Reports for partitions where Node holds no replica (any more), and reports
// older than the one recorded, are ignored: they race with reassignments.
type ReportLag struct {
	// Node is the reporting node.
	Node string `msgpack:"n"`
	// At is when the node measured the lags.
	At time.Time `msgpack:"at"`
	// Lags are the node's replicas' lags.
	Lags []LagReport `msgpack:"l"`
}

// LagReport is one hot replica's lag.
type LagReport struct {
	Type      string `msgpack:"ty"`
	Partition int    `msgpack:"p"`
	// Records is the number of changelog records the replica has not applied.
	Records uint64 `msgpack:"r"`
	// Behind is the age of the newest changelog record the replica has not applied.
	Behind time.Duration `msgpack:"b,omitempty"`
}

// GiveBack records that the active owner of a partition cannot run it at its
// epoch, for good, and hands it back so that the assignor places it again at
// a new epoch: its changelog's newest meta record carries a newer epoch than
// the assignment gives (the cluster's Raft state was reset while the
// changelogs were kept), or the same epoch written by another owner process,
// or the partition keeps failing on its node (a broken local disk).
//
// It applies only while the partition's Active is Node and its Epoch is
// Epoch; otherwise it is stale (ErrStale) and changes nothing, so a late or
// repeated give-back is harmless. Applied, it marks the partition given back
// (PartitionAssignment.GivenBack, EpochFloor, GiveBackReason) and bumps its
// Version; the assignor then moves it like a partition whose node is gone,
// to another node when one is alive, at epoch max(Epoch, MinEpoch)+1.
//
// With Avoid (the node's own fault) the partition also records the node's
// process, at the partition's ActiveIncarnation, in
// PartitionAssignment.Avoid, once: the assignor does not make that node the
// partition's active again while another alive node can take it, until
// the node restarts (announces another incarnation). A give-back from a
// process that has already been replaced (the node's recorded incarnation
// is not the partition's ActiveIncarnation) records no avoidance: the new
// process may run the partition.
type GiveBack struct {
	// Node is the active node giving the partition back.
	Node      string `msgpack:"n"`
	Type      string `msgpack:"ty"`
	Partition int    `msgpack:"p"`
	// Epoch is the epoch the partition was given at, and cannot run at.
	Epoch uint64 `msgpack:"e"`
	// MinEpoch is an epoch the partition's changelog holds: the next epoch
	// must be above it (0: no constraint beyond Epoch).
	MinEpoch uint64 `msgpack:"me,omitempty"`
	// Reason says why, for the logs and the assignor's change reason:
	// "another owner holds epoch 7 in its changelog".
	Reason string `msgpack:"why,omitempty"`
	// Avoid says the failure is the node's own (the partition keeps failing
	// there while NATS answers: a broken disk, say), not the partition's (a
	// fenced changelog): do not place this partition's active on this node
	// again until the node restarts (its incarnation changes).
	Avoid bool `msgpack:"av,omitempty"`
}

// String describes the give-back for logs.
func (g GiveBack) String() string {
	s := fmt.Sprintf("%s gives back %s/%d at epoch %d", g.Node, g.Type, g.Partition, g.Epoch)
	if g.MinEpoch != 0 {
		s += fmt.Sprintf(" (changelog at epoch %d)", g.MinEpoch)
	}
	if g.Avoid {
		s += " (avoid " + g.Node + " until it restarts)"
	}
	if g.Reason != "" {
		s += ": " + g.Reason
	}
	return s
}

// GiveBackReplica records that a node cannot keep its hot replica of a
// partition (a warm-up replica included): it keeps failing there while NATS
// answers, a fault of the node's own. It applies only while Node holds a
// replica of the partition or is its move target (else ErrStale, changing
// nothing). Applied, it records the node's current process in the
// partition's PartitionAssignment.Avoid, once, and bumps its Version: the
// assignor then cancels a move to the node and moves the replica to a node
// the partition does not avoid (see Plan), until the node restarts.
type GiveBackReplica struct {
	// Node is the node giving its replica back.
	Node      string `msgpack:"n"`
	Type      string `msgpack:"ty"`
	Partition int    `msgpack:"p"`
	// Reason says why, for the logs: "failing for 1m0s with NATS connected: ...".
	Reason string `msgpack:"why,omitempty"`
}

// String describes the give-back for logs.
func (g GiveBackReplica) String() string {
	s := fmt.Sprintf("%s gives back its replica of %s/%d (avoid %s until it restarts)", g.Node, g.Type, g.Partition, g.Node)
	if g.Reason != "" {
		s += ": " + g.Reason
	}
	return s
}

func (RegisterType) commandType() CommandType { return CommandRegisterType }
func (NodeUp) commandType() CommandType       { return CommandNodeUp }
func (NodeDown) commandType() CommandType     { return CommandNodeDown }
func (NodeLeave) commandType() CommandType    { return CommandNodeLeave }
func (ForgetNode) commandType() CommandType   { return CommandForgetNode }
func (Assign) commandType() CommandType       { return CommandAssign }
func (ReportLag) commandType() CommandType    { return CommandReportLag }
func (GiveBack) commandType() CommandType     { return CommandGiveBack }
func (GiveBackReplica) commandType() CommandType {
	return CommandGiveBackReplica
}

func (c RegisterType) validate() error {
	switch {
	case c.Type.Name == "":
		return fmt.Errorf("%w: register type: empty name", ErrInvalidCommand)
	case c.Type.Partitions < 1:
		return fmt.Errorf("%w: register type %s: %d partitions", ErrInvalidCommand, c.Type.Name, c.Type.Partitions)
	case c.Type.ReplicationFactor < 0:
		return fmt.Errorf("%w: register type %s: replication factor %d", ErrInvalidCommand, c.Type.Name, c.Type.ReplicationFactor)
	}
	return nil
}

func (c NodeUp) validate() error     { return checkNodeID("node up", c.ID) }
func (c NodeDown) validate() error   { return checkNodeID("node down", c.ID) }
func (c NodeLeave) validate() error  { return checkNodeID("node leave", c.ID) }
func (c ForgetNode) validate() error { return checkNodeID("forget node", c.ID) }

func checkNodeID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%w: %s: empty node id", ErrInvalidCommand, what)
	}
	return nil
}

func (c Assign) validate() error {
	if len(c.Changes) == 0 {
		return fmt.Errorf("%w: assign: no changes", ErrInvalidCommand)
	}
	return nil
}

func (c ReportLag) validate() error {
	if err := checkNodeID("report lag", c.Node); err != nil {
		return err
	}
	if c.At.IsZero() {
		return fmt.Errorf("%w: report lag from %s: no time", ErrInvalidCommand, c.Node)
	}
	return nil
}

func (c GiveBackReplica) validate() error {
	if err := checkNodeID("give back a replica", c.Node); err != nil {
		return err
	}
	switch {
	case c.Type == "":
		return fmt.Errorf("%w: give back a replica from %s: no actor type", ErrInvalidCommand, c.Node)
	case c.Partition < 0:
		return fmt.Errorf("%w: give back a replica from %s: partition %d", ErrInvalidCommand, c.Node, c.Partition)
	}
	return nil
}

func (c GiveBack) validate() error {
	if err := checkNodeID("give back", c.Node); err != nil {
		return err
	}
	switch {
	case c.Type == "":
		return fmt.Errorf("%w: give back from %s: no actor type", ErrInvalidCommand, c.Node)
	case c.Partition < 0:
		return fmt.Errorf("%w: give back from %s: partition %d", ErrInvalidCommand, c.Node, c.Partition)
	case c.Epoch == 0:
		return fmt.Errorf("%w: give back %s/%d from %s: epoch 0 (no partition is active at epoch 0)", ErrInvalidCommand, c.Type, c.Partition, c.Node)
	}
	return nil
}

// EncodeCommand encodes cmd for raft.Apply: its CommandType byte, then the
// command in msgpack.
func EncodeCommand(cmd Command) ([]byte, error) {
	if err := cmd.validate(); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.WriteByte(byte(cmd.commandType()))
	if err := msgpack.NewEncoder(&buf).Encode(cmd); err != nil {
		return nil, fmt.Errorf("encode %s: %w", cmd.commandType(), err)
	}
	return buf.Bytes(), nil
}

// DecodeCommand decodes a command encoded by EncodeCommand. It fails with
// ErrMalformedCommand if b cannot be decoded, and ErrInvalidCommand if the
// command is not well formed.
func DecodeCommand(b []byte) (Command, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrMalformedCommand)
	}
	var cmd Command
	var err error
	switch t := CommandType(b[0]); t {
	case CommandRegisterType:
		cmd, err = decodeAs[RegisterType](b[1:])
	case CommandNodeUp:
		cmd, err = decodeAs[NodeUp](b[1:])
	case CommandNodeDown:
		cmd, err = decodeAs[NodeDown](b[1:])
	case CommandNodeLeave:
		cmd, err = decodeAs[NodeLeave](b[1:])
	case CommandForgetNode:
		cmd, err = decodeAs[ForgetNode](b[1:])
	case CommandAssign:
		cmd, err = decodeAs[Assign](b[1:])
	case CommandReportLag:
		cmd, err = decodeAs[ReportLag](b[1:])
	case CommandGiveBack:
		cmd, err = decodeAs[GiveBack](b[1:])
	case CommandGiveBackReplica:
		cmd, err = decodeAs[GiveBackReplica](b[1:])
	default:
		return nil, fmt.Errorf("%w: unknown command type %d", ErrMalformedCommand, b[0])
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformedCommand, CommandType(b[0]), err)
	}
	if err := cmd.validate(); err != nil {
		return nil, err
	}
	return cmd, nil
}

func decodeAs[C Command](b []byte) (C, error) {
	var c C
	err := msgpack.Unmarshal(b, &c)
	return c, err
}
