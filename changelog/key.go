package changelog

import (
	"encoding/base64"
	"errors"
	"fmt"
)

// ErrBadKey is returned when a subject token is not a valid encoded key.
var ErrBadKey = errors.New("changelog: malformed key token")

// encodedMark starts a token that holds a base64url-encoded key.
const encodedMark = '~'

// EncodeKey returns key as one NATS subject token. Keys made only of letters,
// digits, '-', '_' and '=' (and not starting with '~') stay as they are, so that
// `nats pub orders.alice` addresses key "alice"; any other key, including the empty
// key, becomes '~' followed by its unpadded base64url encoding.
func EncodeKey(key string) string {
	if isPlainKey(key) {
		return key
	}
	return string(encodedMark) + base64.RawURLEncoding.EncodeToString([]byte(key))
}

// AppendKey appends EncodeKey(key) to dst without an intermediate string.
func AppendKey(dst []byte, key []byte) []byte {
	if isPlainKey(string(key)) {
		return append(dst, key...)
	}
	dst = append(dst, encodedMark)
	return base64.RawURLEncoding.AppendEncode(dst, key)
}

// DecodeKey reverses EncodeKey.
func DecodeKey(token string) (string, error) {
	if token == "" {
		return "", fmt.Errorf("%w: empty token", ErrBadKey)
	}
	if token[0] != encodedMark {
		return token, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(token[1:])
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrBadKey, token, err)
	}
	return string(b), nil
}

func isPlainKey(key string) bool {
	if key == "" || key[0] == encodedMark {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '=':
		default:
			return false
		}
	}
	return true
}

// ValidName reports whether s may name an actor type or a store: it becomes part
// of stream names and subject tokens, so it is limited to letters, digits, '-' and
// '_', must not start with '_' (reserved for eddy's own subjects) and is at most 64 bytes.
func ValidName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '_' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
