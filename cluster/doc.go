// Package cluster runs eddy's control plane: nodes find each other by gossip
// (memberlist), elect the assignor by Raft, and hold the assignment in a
// Raft-replicated state machine.
//
// The assignment (Model) says, for each (actor type, partition), which node
// runs its partition actor (the active), with which epoch, and which nodes
// keep hot replicas of its state store, with their reported lag. It changes
// only through Commands applied by the FSM on every node; Assign changes are
// compare-and-set on the partition's epoch, so a command from an old leader
// cannot overwrite newer state. Nodes watch the FSM (Subscribe, Assignment)
// and start or stop their partition actors and replica actors to match,
// fencing their changelog with the partition's epoch. Each run of a node's
// process has its own incarnation (NodeMeta.Incarnation); a node that
// restarts, even before gossip notices, gets a new epoch for each partition
// it stays active for, and runs only the partitions assigned to its current
// incarnation (Model.ActiveOnIncarnation). A node whose partition actor
// cannot run at its epoch for good (its changelog holds a newer epoch, or the
// same one written by another owner, or the partition keeps failing there)
// gives the partition back (Cluster.GiveBack): the assignor places it again
// at a new epoch, above the one its changelog holds, on another node when
// one is alive. When the fault is the node's own (GiveBack.Avoid), the
// partition avoids that node (PartitionAssignment.Avoid) until it restarts:
// the assignor does not make it the partition's active again while another
// alive node may take it, so the partition does not flap back to it.
//
// The assignor is the Raft leader running Plan, a pure function from the
// assignment to the changes it needs: every partition active on an alive
// node, sticky, balanced per actor type, failover by promoting the
// least-lagging hot replica, replicas spread across zones, and moves that
// warm the target up as a replica before handing the active over.
package cluster
