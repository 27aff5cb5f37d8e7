//go:build !linux

package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "the berth function runs in AWS Lambda (Linux) only; build it with GOOS=linux")
	os.Exit(2)
}
