package pgtest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) {
	code := m.Run()
	StopShared()
	os.Exit(code)
}

// TestDB gives parallel tests databases of their own on one server: each
// creates the same table without seeing the other's.
func TestDB(t *testing.T) {
	dsns := make(chan string, 2)
	t.Run("group", func(t *testing.T) {
		for _, name := range []string{"A", "B"} {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				dsn := DB(t)
				dsns <- dsn
				conn, err := pgx.Connect(ctx, dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				for _, sql := range []string{"CREATE TABLE t (v text)", "INSERT INTO t VALUES ('" + name + "')"} {
					if _, err := conn.Exec(ctx, sql); err != nil {
						t.Fatalf("%s: %v", sql, err)
					}
				}
				var n int
				if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 1 {
					t.Fatalf("t holds %d rows (%v), want 1", n, err)
				}
			})
		}
	})
	close(dsns)
	if a, b := <-dsns, <-dsns; a != "" && a == b {
		t.Fatalf("two tests got one database: %q", a)
	}
}

func TestDBName(t *testing.T) {
	for _, c := range []struct {
		n    int
		test string
		want string
	}{
		{1, "TestX", "t1_testx"},
		{12, "TestX/sub-case#01", "t12_testx_sub_case_01"},
		{3, "Test" + string(make([]byte, 100)), "t3_test" + "___________________________________________________________"[:56]},
	} {
		if got := dbName(c.n, c.test); got != c.want {
			t.Errorf("dbName(%d, %q) = %q, want %q", c.n, c.test, got, c.want)
		}
	}
}
