package main

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// column is one column of a table: its title, and whether its cells are
// aligned left (text) rather than right (numbers, as etcdctl aligns).
type column struct {
	title string
	left  bool
}

// writeTable draws rows in a box of line-drawing characters, titles centred,
// in the style of etcdctl 3.7's tables.
func writeTable(w io.Writer, cols []column, rows [][]string) {
	widths := make([]int, len(cols))
	for i, c := range cols {
		widths[i] = utf8.RuneCountInString(c.title)
	}
	for _, row := range rows {
		for i := range cols {
			widths[i] = max(widths[i], utf8.RuneCountInString(cell(row, i)))
		}
	}
	rule := func(left, mid, right string) {
		parts := make([]string, len(widths))
		for i, n := range widths {
			parts[i] = strings.Repeat("─", n+2)
		}
		fmt.Fprintln(w, left+strings.Join(parts, mid)+right)
	}
	line := func(cells []string) {
		fmt.Fprintln(w, "│ "+strings.Join(cells, " │ ")+" │")
	}

	rule("┌", "┬", "┐")
	titles := make([]string, len(cols))
	for i, c := range cols {
		titles[i] = pad(c.title, widths[i], 0)
	}
	line(titles)
	if len(rows) > 0 {
		rule("├", "┼", "┤")
	}
	for _, row := range rows {
		cells := make([]string, len(cols))
		for i, c := range cols {
			align := 1
			if c.left {
				align = -1
			}
			cells[i] = pad(cell(row, i), widths[i], align)
		}
		line(cells)
	}
	rule("└", "┴", "┘")
}

func cell(row []string, i int) string {
	if i < len(row) {
		return row[i]
	}
	return ""
}

// pad fills s with spaces to width: align < 0 left, 0 centre, > 0 right.
func pad(s string, width, align int) string {
	n := width - utf8.RuneCountInString(s)
	if n <= 0 {
		return s
	}
	switch {
	case align < 0:
		return s + strings.Repeat(" ", n)
	case align > 0:
		return strings.Repeat(" ", n) + s
	default:
		return strings.Repeat(" ", n/2) + s + strings.Repeat(" ", n-n/2)
	}
}

// byteSize writes n in SI units the way etcdctl's tables do: "25 kB",
// "2.1 GB", "512 B".
func byteSize(n uint64) string {
	const base = 1000
	units := []string{"B", "kB", "MB", "GB", "TB", "PB", "EB"}
	if n < 10 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	e := 0
	for v >= base && e < len(units)-1 {
		v /= base
		e++
	}
	v = float64(int64(v*10+0.5)) / 10
	if v < 10 {
		return fmt.Sprintf("%.1f %s", v, units[e])
	}
	return fmt.Sprintf("%.0f %s", v, units[e])
}
