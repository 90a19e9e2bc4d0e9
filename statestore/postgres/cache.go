package postgres

// cache holds a partition's values in memory, absent keys included, up to
// about limit bytes: when full, it drops half of its entries (those Go's
// map iteration visits first, which is random enough for a cache whose
// misses cost one round trip).
type cache struct {
	m     map[string]cached
	bytes int
	limit int
	// complete: every key not in m is absent (a partition that started
	// empty, until the first eviction).
	complete bool
}

type cached struct {
	value []byte
	ok    bool // false: known absent
}

// entryOverhead is what an entry costs besides its key and value: the map
// slot and the string and slice headers.
const entryOverhead = 64

func newCache(limit int) cache { return cache{m: map[string]cached{}, limit: limit} }

func cacheKey(store string, key []byte) string {
	b := make([]byte, 0, len(store)+1+len(key))
	b = append(append(append(b, store...), 0), key...)
	return string(b)
}

func (c *cache) get(store string, key []byte) (value []byte, ok, hit bool) {
	e, hit := c.m[cacheKey(store, key)]
	return e.value, e.ok, hit || c.complete
}

func (c *cache) put(store string, key, value []byte, ok bool) {
	if c.limit == 0 {
		return
	}
	k := cacheKey(store, key)
	if old, had := c.m[k]; had {
		c.bytes -= len(k) + len(old.value) + entryOverhead
	}
	size := len(k) + len(value) + entryOverhead
	if c.bytes+size > c.limit {
		c.evict()
	}
	c.m[k] = cached{value: value, ok: ok}
	c.bytes += size
}

// evict drops about half of the entries.
func (c *cache) evict() {
	c.complete = false
	target := c.bytes / 2
	for k, e := range c.m {
		if c.bytes <= target {
			return
		}
		delete(c.m, k)
		c.bytes -= len(k) + len(e.value) + entryOverhead
	}
}
