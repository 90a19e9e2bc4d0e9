package eddy

import (
	"errors"

	"github.com/eddyrt/eddy/partition"
	"github.com/eddyrt/eddy/statestore"
)

// The errors callers branch on. Errors returned by eddy wrap them (test with
// errors.Is); their texts start with "eddy:".
var (
	// ErrNotFound means a key has no committed state.
	ErrNotFound = statestore.ErrNotFound
	// ErrMalformed means an event could not be decoded; such events go to the
	// dead-letter stream without retries (it is permanent: it matches
	// partition.ErrPermanent too).
	ErrMalformed error = malformedError{}
	// ErrValueTooLarge means a value exceeds Config.MaxValueSize; the event
	// goes to the dead-letter stream without retries.
	ErrValueTooLarge = partition.ErrValueTooLarge
	// ErrInvalidConfig wraps every failure of Config.Validate and
	// ActorType.Validate.
	ErrInvalidConfig = errors.New("eddy: invalid config")
	// ErrNotClustered means the node runs alone (Config.GossipAddr is empty).
	ErrNotClustered = errors.New("eddy: node is not a cluster member")
	// ErrUnknownStream means a handler emitted to a stream that does not
	// exist (not among ActorType.Outputs, not an actor type): the event goes
	// to the dead-letter stream, saying which.
	ErrUnknownStream = partition.ErrUnknownStream
	// ErrUnknownType means no actor type of that name is registered.
	ErrUnknownType = errors.New("eddy: unknown actor type")
	// ErrUnknownTable means no table of that name is registered.
	ErrUnknownTable = errors.New("eddy: unknown table")
	// ErrStarted means the node has been started already: actor types are
	// registered before Start, and a node starts once.
	ErrStarted = errors.New("eddy: node already started")
	// ErrNotRunning means the node is not started (or already stopped).
	ErrNotRunning = errors.New("eddy: node not running")
	// ErrFenced means a newer owner took over a partition.
	ErrFenced = partition.ErrFenced
	// ErrUnavailable means the partition of a key does not run now: it is
	// retrying after a failure (NATS away, say), fenced, or stopped. The
	// error says which and why; HTTP answers it with 503.
	ErrUnavailable = partition.ErrUnavailable
	// ErrInputGone means a partition of an actor type without a changelog
	// (ActorType.NoChangelog) cannot be rebuilt: its input stream no longer
	// holds the events it needs. The partition stops and says so.
	ErrInputGone = partition.ErrInputGone
	// ErrStateVersion means a partition's state is of a newer version than
	// the actor type's (ActorType.StateVersion) on this node: the partition
	// stops here, says which versions and which owner wrote the newer state
	// (a *partition.VersionError), and in a cluster is given back to the
	// assignor, which keeps it off this node.
	ErrStateVersion = partition.ErrStateVersion
	// ErrInputRecreated means a partition's state in PostgreSQL was
	// committed from an input stream that was since deleted and created
	// again: the partition does not run (reading the new stream from the
	// old offset would skip its events); reset the type (node reset).
	ErrInputRecreated = partition.ErrInputRecreated
)

// ErrNATSUnavailable is returned by Start when it gave up waiting for NATS:
// the servers did not accept a connection, JetStream did not answer, or the
// streams could not be created before Config.NATSWait passed or Start's
// context ended. The error names the step, the URLs and the last error.
var ErrNATSUnavailable = errors.New("eddy: gave up waiting for NATS")

// ErrIncompatibleStream is wrapped by the errors of Start for a stream that
// exists with a config eddy cannot use (another partition count, other
// subjects or storage, a changelog without MaxMsgsPerSubject=1 or atomic
// publish). Such an error names the field and both values; eddy does not
// retry it, nor change the stream.
var ErrIncompatibleStream = partition.ErrIncompatibleStream

// malformedError is ErrMalformed: one line of text, and permanent.
type malformedError struct{}

func (malformedError) Error() string { return "eddy: malformed event" }

// Is makes ErrMalformed match partition.ErrPermanent, which sends the event
// to the dead-letter stream without retries.
func (malformedError) Is(target error) bool { return target == partition.ErrPermanent }
