package changelog

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// Reads that decide fencing go to the stream leader through the JetStream
// API ($JS.API.STREAM.INFO, $JS.API.STREAM.MSG.GET), not through direct
// gets: changelog streams allow direct gets, which any replica of an R3
// stream may answer from a state that lags the leader's.

// apiError is a JetStream API error.
type apiError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s (err_code %d)", e.Description, e.ErrCode)
}

// noMessageFound is JetStream's error code for a message get that finds nothing.
const noMessageFound = 10037

// readTimeout bounds a read whose context has no deadline: a JetStream API
// request that no server answers (a stream or meta leader being elected)
// would otherwise wait as long as the context.
const readTimeout = 5 * time.Second

// request sends a JetStream API request, bounded by readTimeout when ctx
// has no deadline.
func request(ctx context.Context, conn Conn, subject string, data []byte) (*nats.Msg, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, readTimeout)
		defer cancel()
	}
	return conn.RequestWithContext(ctx, subject, data)
}

// LastSequence returns the changelog's last sequence as its stream leader
// knows it.
func LastSequence(ctx context.Context, conn Conn, s Subjects) (uint64, error) {
	resp, err := request(ctx, conn, "$JS.API.STREAM.INFO."+s.Stream(), nil)
	if err != nil {
		return 0, fmt.Errorf("changelog %s: stream info: %w", s.Stream(), err)
	}
	var info struct {
		State struct {
			LastSeq uint64 `json:"last_seq"`
		} `json:"state"`
		Error *apiError `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &info); err != nil {
		return 0, fmt.Errorf("changelog %s: stream info: %w", s.Stream(), err)
	}
	if info.Error != nil {
		return 0, fmt.Errorf("changelog %s: stream info: %w", s.Stream(), info.Error)
	}
	return info.State.LastSeq, nil
}

// storedMsg is a message as the JetStream API returns it.
type storedMsg struct {
	Subject string    `json:"subject"`
	Seq     uint64    `json:"seq"`
	Data    []byte    `json:"data"`
	Time    time.Time `json:"time"`
}

type msgGetRequest struct {
	Seq     uint64 `json:"seq,omitempty"`
	LastFor string `json:"last_by_subj,omitempty"`
}

// getMsg reads one message from the stream leader; ok is false when there
// is none.
func getMsg(ctx context.Context, conn Conn, stream string, req msgGetRequest) (storedMsg, bool, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return storedMsg{}, false, err
	}
	resp, err := request(ctx, conn, "$JS.API.STREAM.MSG.GET."+stream, b)
	if err != nil {
		return storedMsg{}, false, fmt.Errorf("changelog %s: get message: %w", stream, err)
	}
	var r struct {
		Message *storedMsg `json:"message"`
		Error   *apiError  `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return storedMsg{}, false, fmt.Errorf("changelog %s: get message: %w", stream, err)
	}
	switch {
	case r.Error != nil && r.Error.ErrCode == noMessageFound:
		return storedMsg{}, false, nil
	case r.Error != nil:
		return storedMsg{}, false, fmt.Errorf("changelog %s: get message: %w", stream, r.Error)
	case r.Message == nil:
		return storedMsg{}, false, fmt.Errorf("changelog %s: get message: empty answer", stream)
	}
	return *r.Message, true, nil
}

// LastMetaRecord is the newest meta record of a changelog and where it is.
type LastMetaRecord struct {
	Meta
	// Seq is the record's changelog sequence.
	Seq uint64
	// Time is when the stream stored it.
	Time time.Time
}

// ReadLastMeta returns the newest meta record of the changelog as its stream
// leader knows it, and whether there is one.
func ReadLastMeta(ctx context.Context, conn Conn, s Subjects) (LastMetaRecord, bool, error) {
	raw, ok, err := getMsg(ctx, conn, s.Stream(), msgGetRequest{LastFor: s.Meta()})
	if err != nil || !ok {
		return LastMetaRecord{}, false, err
	}
	m, err := DecodeMeta(raw.Data)
	if err != nil {
		return LastMetaRecord{}, false, fmt.Errorf("last meta %s: %w", s.Stream(), err)
	}
	return LastMetaRecord{Meta: m, Seq: raw.Seq, Time: raw.Time}, true, nil
}
