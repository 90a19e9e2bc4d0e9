package statestore

import "github.com/vmihailenco/msgpack/v5"

// Encode encodes v as msgpack (vmihailenco/msgpack/v5 with its defaults:
// structs as maps keyed by field name or `msgpack:"name"` tag). Values in
// stores, changelog records and Meta all use it.
func Encode(v any) ([]byte, error) {
	return msgpack.Marshal(v)
}

// Decode decodes msgpack b into v, which must be a pointer. Fields missing in
// b keep their value in v, and fields unknown to v are skipped, so a value
// type can gain and lose fields between versions.
func Decode(b []byte, v any) error {
	return msgpack.Unmarshal(b, v)
}
