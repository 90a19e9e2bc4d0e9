package workload

// Model is what was published, acknowledged events only: the state the
// bank and the word count must end in.
type Model struct {
	Deposited     map[string]int64 // account -> sum of its deposits
	TransfersFrom map[string]int64 // account -> transfers published from it
	Words         map[string]int64 // word -> occurrences in the lines
	Deposits      int64
	Transfers     int64
	Lines         int64
	WordsSent     int64
}

func newModel() Model {
	return Model{Deposited: map[string]int64{}, TransfersFrom: map[string]int64{}, Words: map[string]int64{}}
}

// Events is how many events the model holds: deposits, transfers and lines.
func (m *Model) Events() int64 { return m.Deposits + m.Transfers + m.Lines }
