// Command wordcount runs the word count example on one node with an embedded
// NATS server: lines are split into words by one actor type, each word is sent
// to the actor of that word (in another partition), which counts it and emits
// the running count to the "wordcounts" stream.
//
//	go run ./examples/wordcount
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"time"

	"github.com/eddyrt/eddy"
	"github.com/eddyrt/eddy/examples/apps"
)

var text = []string{
	"the quick brown fox jumps over the lazy dog",
	"a changelog is the source of truth of a state store",
	"the hot replica tails the changelog of the partition",
	"every event is processed once and only once",
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "wordcount:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	dir, err := os.MkdirTemp("", "eddy-wordcount-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := eddy.DefaultConfig()
	cfg.DataDir, cfg.EmbeddedNATSPort, cfg.HTTPAddr = dir, -1, ""
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	node, err := eddy.NewNode(cfg)
	if err != nil {
		return err
	}
	for _, t := range apps.WordCount(4) {
		if err := node.Register(t); err != nil {
			return err
		}
	}
	if err := node.Start(ctx); err != nil {
		return err
	}
	defer node.Stop(context.Background())
	client := node.Client()
	want := map[string]int64{}
	for i := range 100 {
		line := text[i%len(text)]
		for _, w := range apps.Words(line) {
			want[w]++
		}
		if err := client.Send(ctx, apps.LinesType, "line-"+strconv.Itoa(i), line); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := map[string]int64{}
		done := true
		for w, n := range want {
			var c int64
			if err := node.Query(ctx, apps.WordsType, w, &c); err != nil && err != eddy.ErrNotFound {
				return err
			}
			got[w] = c
			done = done && c == n
		}
		if done {
			for _, c := range apps.SortedCounts(got)[:8] {
				fmt.Printf("%-12s %d\n", c.Word, c.Count)
			}
			fmt.Println("every count matches the input")
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("counts did not converge: %v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
