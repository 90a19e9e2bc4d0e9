package eddy

import "github.com/eddyrt/eddy/partition"

// SetHooks makes the nodes of cfg call h between the steps of every commit:
// fault injection for this package's tests, kept out of the public Config.
func SetHooks(cfg *Config, h partition.Hooks) { cfg.hooks = h }
