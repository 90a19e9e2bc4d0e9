package pgproc

// KillAll SIGKILLs s's postmaster and every process it started, as Stop and
// Crash do when a shutdown hangs, and returns once the postmaster is reaped.
func KillAll(s *Server) {
	s.mu.Lock()
	defer s.mu.Unlock()
	killAll(s.proc.cmd.Process.Pid)
	<-s.proc.alive.Done()
	s.wg.Wait()
}
