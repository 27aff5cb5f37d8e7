package dag

import (
	"context"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func TestRunOrder(t *testing.T) {
	tests := []struct {
		name  string
		tasks []Task
		want  []int // start order with concurrency 1
	}{
		{"independent tasks in index order", []Task{{}, {}, {}}, []int{0, 1, 2}},
		{"a dependency first", []Task{{Deps: []int{2}}, {}, {}}, []int{1, 2, 0}},
		{"chain", []Task{{Deps: []int{1}}, {Deps: []int{2}}, {}}, []int{2, 1, 0}},
		{"diamond", []Task{{}, {Deps: []int{0}}, {Deps: []int{0}}, {Deps: []int{1, 2}}}, []int{0, 1, 2, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var order []int
			var mu sync.Mutex
			err := Run(context.Background(), tt.tasks, 1, func(_ context.Context, i int) {
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
			})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(order, tt.want) {
				t.Errorf("order %v, want %v", order, tt.want)
			}
		})
	}
}

// TestLimits checks that no more than the concurrency and one task of a
// group run at a time, by counting, not by timing.
func TestLimits(t *testing.T) {
	tasks := make([]Task, 12)
	for i := range tasks {
		if i%3 == 0 {
			tasks[i].Group = "g"
		}
	}
	var mu sync.Mutex
	running, peak, groupRunning := 0, 0, 0
	gate := make(chan struct{})
	release := make(chan struct{})
	go func() {
		// Let tasks pile up before releasing them one by one.
		for range tasks {
			<-gate
			release <- struct{}{}
		}
	}()
	err := Run(context.Background(), tasks, 3, func(_ context.Context, i int) {
		mu.Lock()
		running++
		peak = max(peak, running)
		if tasks[i].Group != "" {
			groupRunning++
			if groupRunning > 1 {
				t.Errorf("two tasks of group g at once")
			}
		}
		mu.Unlock()
		gate <- struct{}{}
		<-release
		mu.Lock()
		running--
		if tasks[i].Group != "" {
			groupRunning--
		}
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if peak > 3 {
		t.Errorf("%d tasks ran at once, limit 3", peak)
	}
}

func TestCheck(t *testing.T) {
	if err := Check([]Task{{Deps: []int{1}}, {Deps: []int{0}}}); err == nil || !strings.Contains(err.Error(), "itself") {
		t.Errorf("cycle: %v", err)
	}
	if err := Check([]Task{{Deps: []int{5}}}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing: %v", err)
	}
}
