// Command node runs an eddy node and the tools around it.
//
//	node run    [flags]   run a node with the example apps (bank, wordcount), optionally under demo load
//	node status [flags]   print a running node's partitions and, in a cluster, members, leader and assignment
//	node demo   [flags]   start NATS and 3 node processes, run the bank under load, kill a node, print what happened
//	node bench  [flags]   measure eddy against the raw JetStream limit on this machine
//	node bench failover   measure failover (with and without hot replicas) and handover pauses on a 3-process cluster
//	node bench memory     memory and disk of one node process and its nats-server process for N keys, and nats-server's restart time
//	node bench latency    measure end-to-end latency (publish ack to emitted output seen) at half the max rate
//	node bench postgres   measure eddy with its state in PostgreSQL against raw batched upserts of the same rows
//	node snapshot [flags] snapshot an actor type's partitions now (the nodes that run them take them)
//	node reset  [flags]   delete an actor type's changelogs, so that it processes its input again from the start
//
// Every flag has an environment variable mirror: --data-dir is EDDY_DATA_DIR,
// --nats is EDDY_NATS, and so on. A flag given on the command line wins.
//
// For development, `node run --app bank --load 200` starts an embedded NATS
// server (JetStream under <data-dir>/nats) and needs nothing else installed;
// `--nats nats://...` uses a real NATS server instead.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal kills the process at once
	}()
	c := &cli{stdout: os.Stdout, stderr: os.Stderr, lookupEnv: os.LookupEnv}
	os.Exit(c.main(ctx, os.Args[1:]))
}

// cli is the command with its outputs and environment, so tests can run it in process.
type cli struct {
	stdout, stderr io.Writer
	lookupEnv      func(string) (string, bool)
}

const usage = `usage: node <command> [flags]

commands:
  run      run a node with example apps: node run --app bank,wordcount [--load 200]
  status   print a node's partitions, and its cluster's members, leader and assignment: node status [--http 127.0.0.1:8080]
  demo     a local 3-node cluster under bank load; kills a node and shows the failover: node demo [--kills 1]
  bench    measure eddy against raw JetStream on this machine: node bench [--events 1000000]
           node bench failover [--kills 20]: failover and handover pauses on a 3-process cluster
           node bench memory [--keys 10000000]: memory and disk of a node and its nats-server for N keys
           node bench latency [--fraction 0.5]: publish-ack-to-output latency at a share of the max rate
           node bench postgres [--events 200000]: eddy on PostgreSQL against raw batched upserts
           node bench failover --state-store postgres: the failover gap of a type on PostgreSQL
  snapshot snapshot an actor type's partition stores now: node snapshot --nats URL --type bank [--partition 0]
  reset    make an actor type process its input again from the first event: node reset --type bank [--dry-run]
           (refused while a node runs the type; deletes its changelogs, leaves its input and outputs;
           with --pg-dsn, also resets its state in PostgreSQL)

Run 'node <command> -h' for the flags of a command. Every flag --some-flag
can also be set with the environment variable EDDY_SOME_FLAG.
`

// main runs one command and returns the process exit code.
func (c *cli) main(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = c.run(ctx, args[1:])
	case "status":
		err = c.status(ctx, args[1:])
	case "bench":
		err = c.bench(ctx, args[1:])
	case "demo":
		err = c.demo(ctx, args[1:])
	case "reset":
		err = c.reset(ctx, args[1:])
	case "snapshot":
		err = c.snapshot(ctx, args[1:])
	case "help", "-h", "-help", "--help":
		fmt.Fprint(c.stdout, usage)
		return 0
	default:
		fmt.Fprintf(c.stderr, "node: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2 // the flag package has printed why
	case err != nil:
		fmt.Fprintf(c.stderr, "node %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// errUsage marks a command line that could not be parsed.
var errUsage = errors.New("usage")

// parse parses a command's flags and their EDDY_* mirrors.
func (c *cli) parse(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(c.stderr)
	err := parseFlags(fs, args, c.lookupEnv)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	return err
}
