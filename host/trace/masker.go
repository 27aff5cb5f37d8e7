package trace

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Masked is what a secret is replaced with in the trace.
const Masked = "[MASKED]"

// maskChunk bounds how much of one Write the Masker works on at a time, so
// that a huge Write does not make it buffer a copy of all of it.
const maskChunk = 64 << 10

// Masker replaces every occurrence of each secret with "[MASKED]", also when
// a secret is split across Write calls.
//
// Where occurrences overlap, the leftmost wins, and among secrets that start
// at the same byte the longest wins; scanning goes on after the masked
// occurrence. For a single secret the output is exactly
// strings.ReplaceAll(input, secret, "[MASKED]").
//
// The Masker holds back only the shortest tail of what it was given that
// could still be the start of a secret (or, where a secret matched, of a
// longer one); Close flushes it. A multi-line secret is matched as a whole.
// A Masker is safe for one writer; once the underlying writer fails, every
// later call returns that error.
type Masker struct {
	w       io.Writer
	secrets [][]byte
	// fail[k] is the KMP failure function of secrets[k]: fail[k][i] is the
	// length of the longest proper border of secrets[k][:i+1].
	fail [][]int
	// partial[k] is the length of the longest proper prefix of secrets[k]
	// that is a suffix of buf (only kept between calls for the held tail).
	partial []int
	// rare[k] is the offset in secrets[k] of the byte least likely in a
	// log; candidates are found by searching for it.
	rare []int
	// next[k] is scratch: where secrets[k] next occurs in buf, or -1.
	next []int
	// buf holds the held-back tail followed by the chunk being worked on.
	buf []byte
	out []byte
	err error
}

// NewMasker returns a Masker that writes to w with secrets replaced.
// Empty and repeated secrets are ignored; with no secrets left the Masker
// passes writes straight through.
func NewMasker(w io.Writer, secrets []string) *Masker {
	m := &Masker{w: w}
	seen := make(map[string]bool, len(secrets))
	for _, s := range secrets {
		if s == "" || seen[s] {
			continue
		}
		seen[s] = true
		m.secrets = append(m.secrets, []byte(s))
	}
	// Longest first, so that among secrets at the same position the first
	// one found is the longest; the order is otherwise irrelevant.
	slices.SortStableFunc(m.secrets, func(a, b []byte) int { return len(b) - len(a) })
	m.fail = make([][]int, len(m.secrets))
	m.rare = make([]int, len(m.secrets))
	for k, s := range m.secrets {
		m.fail[k] = borders(s)
		m.rare[k] = rarestByte(s)
	}
	m.partial = make([]int, len(m.secrets))
	m.next = make([]int, len(m.secrets))
	return m
}

// borders computes the KMP failure function of s.
func borders(s []byte) []int {
	f := make([]int, len(s))
	k := 0
	for i := 1; i < len(s); i++ {
		for k > 0 && s[i] != s[k] {
			k = f[k-1]
		}
		if s[i] == s[k] {
			k++
		}
		f[i] = k
	}
	return f
}

// Write masks p and passes on everything that can no longer be part of a
// secret. It reports len(p) unless the underlying writer fails.
func (m *Masker) Write(p []byte) (int, error) {
	if m.err != nil {
		return 0, m.err
	}
	if len(m.secrets) == 0 {
		n, err := m.w.Write(p)
		if err != nil {
			m.err = err
		}
		return n, err
	}
	done := 0
	for done < len(p) {
		chunk := p[done:min(len(p), done+maskChunk)]
		m.advance(chunk)
		m.buf = append(m.buf, chunk...)
		if err := m.process(false); err != nil {
			m.err = err
			return done, err
		}
		done += len(chunk)
	}
	return done, nil
}

// Close writes out the held-back tail, masked. It does not close the
// underlying writer. Writes after Close start a new stream.
func (m *Masker) Close() error {
	if m.err != nil {
		return m.err
	}
	if len(m.buf) == 0 {
		return nil
	}
	if err := m.process(true); err != nil {
		m.err = err
		return err
	}
	clear(m.partial)
	return nil
}

// advance moves partial[k] from "suffix of buf" to "suffix of buf+chunk"
// by running each secret's KMP automaton over the bytes that matter.
func (m *Masker) advance(chunk []byte) {
	for k, s := range m.secrets {
		if len(s) < 2 {
			continue // a one-byte secret has no proper prefix to wait for
		}
		st := m.partial[k]
		in := chunk
		if len(chunk) >= len(s)-1 {
			// Only the last len(s)-1 bytes can hold a proper prefix.
			st = 0
			in = chunk[len(chunk)-(len(s)-1):]
		}
		fail := m.fail[k]
		for _, c := range in {
			for st > 0 && s[st] != c {
				st = fail[st-1]
			}
			if s[st] == c {
				st++
			}
			if st == len(s) {
				st = fail[st-1]
			}
		}
		m.partial[k] = st
	}
}

// process masks m.buf, writes out what is settled and keeps in m.buf only
// the tail that could still grow into a secret. With final set nothing is
// kept back.
func (m *Masker) process(final bool) error {
	buf := m.buf
	out := m.out[:0]
	for k := range m.secrets {
		m.next[k] = m.index(buf, 0, k)
	}
	if final {
		clear(m.partial)
	}
	cursor := 0
	for {
		// Leftmost occurrence at or after cursor; secrets are sorted
		// longest first, so ties keep the longest.
		at, length := -1, 0
		for k, s := range m.secrets {
			if n := m.next[k]; n >= 0 && n < cursor {
				m.next[k] = m.index(buf, cursor, k)
			}
			if n := m.next[k]; n >= 0 && (at < 0 || n < at) {
				at, length = n, len(s)
			}
		}
		// Leftmost start of a secret's proper prefix that runs to the end
		// of buf, at or after cursor.
		hold := len(buf)
		for k := range m.secrets {
			st := m.partial[k]
			for st > 0 && len(buf)-st < cursor {
				st = m.fail[k][st-1]
			}
			m.partial[k] = st
			if st > 0 && len(buf)-st < hold {
				hold = len(buf) - st
			}
		}
		// An occurrence before any pending prefix is settled: nothing
		// longer can start there, or that longer secret's prefix would
		// be pending at the same place.
		if at >= 0 && at < hold {
			out = append(out, buf[cursor:at]...)
			out = append(out, Masked...)
			cursor = at + length
			continue
		}
		out = append(out, buf[cursor:hold]...)
		m.buf = buf[:copy(buf, buf[hold:])]
		break
	}
	m.out = out
	if len(out) == 0 {
		return nil
	}
	if _, err := m.w.Write(out); err != nil {
		return fmt.Errorf("writing masked output: %w", err)
	}
	return nil
}

// logBytes lists bytes from the most to the least common in build logs (a
// rough estimate); bytes not listed are taken as rarer still.
const logBytes = " etaoinsrhldcumfpgwybvkxjqz\n.-/_:=0123456789" +
	"ETAOINSRHLDCUMFPGWYBVKXJQZ,()[]\"'\t"

// rarestByte returns the offset of the byte of s least likely in a log
// (the first one of equal rarity).
func rarestByte(s []byte) int {
	best, bestRarity := 0, -1
	for i, c := range s {
		rarity := strings.IndexByte(logBytes, c)
		if rarity < 0 {
			rarity = len(logBytes)
		}
		if rarity > bestRarity {
			best, bestRarity = i, rarity
		}
	}
	return best
}

// index returns the first occurrence of secrets[k] in buf at or after from,
// or -1. It looks for the secret's rarest byte and compares around it;
// when that keeps failing it leaves the rest to bytes.Index.
func (m *Masker) index(buf []byte, from, k int) int {
	s, r := m.secrets[k], m.rare[k]
	c := s[r]
	end := len(buf) - (len(s) - 1 - r) // the rare byte must lie before end
	fails := 0
	for i := from + r; i < end; {
		j := bytes.IndexByte(buf[i:end], c)
		if j < 0 {
			return -1
		}
		p := i + j - r
		if bytes.Equal(buf[p:p+len(s)], s) {
			return p
		}
		i += j + 1
		if fails++; fails > 16 && fails > (i-from)>>6 {
			if n := bytes.Index(buf[p+1:], s); n >= 0 {
				return p + 1 + n
			}
			return -1
		}
	}
	return -1
}
