package replay

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progress is the progress bar of a long replay: bytes of the captures read (which gives the rate in
// bytes and the time left), with packets and packets per second in its description. A nil *progress
// shows nothing.
type progress struct {
	w     io.Writer
	bar   *progressbar.ProgressBar
	start time.Time
	done  int64 // bytes of the captures already finished
	total int64
}

func newProgress(w io.Writer, pcaps []string) *progress {
	var total int64
	for _, name := range pcaps {
		if st, err := os.Stat(name); err == nil {
			total += st.Size()
		}
	}
	bar := progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("replay"),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
	return &progress{w: w, bar: bar, start: time.Now(), total: total}
}

// update shows where the replay is in src after packets packets.
func (p *progress) update(src *Source, packets int) {
	if p == nil || packets == 0 {
		return
	}
	rate := float64(packets) / max(time.Since(p.start).Seconds(), 1e-3)
	p.bar.Describe(fmt.Sprintf("%s: %d packets, %.0f pkt/s", src.Name(), packets, rate))
	// Errors of a progress display change nothing about the replay. Reading runs ahead of deciding by
	// a buffer, so the bar stops short of full until finish: a full bar would end itself.
	_ = p.bar.Set64(min(p.done+src.offset(), p.total-1))
}

// fileDone counts src's bytes as read.
func (p *progress) fileDone(src *Source) {
	if p == nil {
		return
	}
	p.done += src.offset()
}

// finish clears the bar and says how many packets were replayed.
func (p *progress) finish(packets int) error {
	if p == nil {
		return nil
	}
	_ = p.bar.Finish()
	if _, err := fmt.Fprintf(p.w, "replay: %d packets done\n", packets); err != nil {
		return fmt.Errorf("progress: %w", err)
	}
	return nil
}
