//go:build !unix

package sdktest

// canSeeProcesses says whether processGone works on this system.
const canSeeProcesses = false

func processGone(int) bool { return false }

func killProcess(int) {}
