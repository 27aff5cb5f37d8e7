// Package dag runs tasks in the order of their dependencies: a task starts
// as soon as every task it depends on has finished, at most a given number
// at a time, never two tasks of the same group at once.
package dag

import (
	"context"
	"fmt"
	"sync"
)

// Task is one node of the graph.
type Task struct {
	// Deps are the indexes of the tasks this one waits for.
	Deps []int
	// Group, when not empty, is a resource group: tasks of one group run
	// one at a time.
	Group string
	// Light tasks (skips, decisions that run nothing) do not take one of
	// the concurrency slots.
	Light bool
}

// Check returns an error naming a task that depends on itself through
// others, or on a task that does not exist.
func Check(tasks []Task) error {
	state := make([]int, len(tasks)) // 0 new, 1 on the path, 2 done
	var visit func(i int, path []int) error
	visit = func(i int, path []int) error {
		switch state[i] {
		case 1:
			return fmt.Errorf("task %d depends on itself (through %v)", i, append(path, i))
		case 2:
			return nil
		}
		state[i] = 1
		for _, d := range tasks[i].Deps {
			if d < 0 || d >= len(tasks) {
				return fmt.Errorf("task %d depends on task %d, which does not exist", i, d)
			}
			if err := visit(d, append(path, i)); err != nil {
				return err
			}
		}
		state[i] = 2
		return nil
	}
	for i := range tasks {
		if err := visit(i, nil); err != nil {
			return err
		}
	}
	return nil
}

// Run calls run for every task once all of its dependencies have
// returned, with at most concurrency calls for tasks that are not Light
// under way at a time and one at a time per group. Among tasks that are
// ready, the one with the lowest index starts first, so with concurrency 1
// the order is deterministic. run is called for every task, also after ctx
// ends: it is up to run to notice ctx and return quickly. The graph must
// pass Check.
func Run(ctx context.Context, tasks []Task, concurrency int, run func(ctx context.Context, i int)) error {
	if err := Check(tasks); err != nil {
		return err
	}
	concurrency = max(1, concurrency)
	waiting := make([]int, len(tasks))
	dependents := make([][]int, len(tasks))
	for i, t := range tasks {
		waiting[i] = len(t.Deps)
		for _, d := range t.Deps {
			dependents[d] = append(dependents[d], i)
		}
	}
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	started := make([]bool, len(tasks))
	busyGroups := map[string]bool{}
	running, done := 0, 0

	// next returns the lowest ready task that may start now, or -1.
	next := func() int {
		for i, t := range tasks {
			if started[i] || waiting[i] > 0 {
				continue
			}
			if !t.Light && running >= concurrency {
				continue
			}
			if t.Group != "" && busyGroups[t.Group] {
				continue
			}
			return i
		}
		return -1
	}
	var wg sync.WaitGroup
	mu.Lock()
	for done < len(tasks) {
		i := next()
		if i < 0 {
			cond.Wait()
			continue
		}
		started[i] = true
		t := tasks[i]
		if !t.Light {
			running++
		}
		if t.Group != "" {
			busyGroups[t.Group] = true
		}
		wg.Go(func() {
			run(ctx, i)
			mu.Lock()
			defer mu.Unlock()
			if !t.Light {
				running--
			}
			if t.Group != "" {
				delete(busyGroups, t.Group)
			}
			for _, d := range dependents[i] {
				waiting[d]--
			}
			done++
			cond.Broadcast()
		})
	}
	mu.Unlock()
	wg.Wait()
	return nil
}
