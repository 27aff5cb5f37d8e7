package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
)

// execIO are the streams of one exec; nil ones are not opened.
type execIO struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// exec runs cmd in a container of the pod and returns its exit code. A
// non-zero exit is not an error; an error means the command's end is
// unknown.
//
// It speaks WebSocket (the current protocol) and falls back to SPDY only
// when the WebSocket upgrade itself fails: falling back on any error would
// run the command a second time after a non-zero exit, with its stdin
// already consumed, and report that run's status instead.
func (c *cluster) exec(ctx context.Context, ns, pod, container string, cmd []string, streams execIO) (int, error) {
	req := c.cs.CoreV1().RESTClient().Post().
		Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: container,
			Command:   cmd,
			Stdin:     streams.stdin != nil,
			Stdout:    streams.stdout != nil,
			Stderr:    streams.stderr != nil,
		}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(c.rest, http.MethodGet, req.URL().String())
	if err != nil {
		return -1, fmt.Errorf("setting up an exec over WebSocket: %w", err)
	}
	spdy, err := remotecommand.NewSPDYExecutor(c.rest, http.MethodPost, req.URL())
	if err != nil {
		return -1, fmt.Errorf("setting up an exec over SPDY: %w", err)
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, upgradeFailed)
	if err != nil {
		return -1, fmt.Errorf("setting up an exec: %w", err)
	}
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: streams.stdin, Stdout: streams.stdout, Stderr: streams.stderr})
	if err == nil {
		return 0, nil
	}
	var exit utilexec.ExitError
	if errors.As(err, &exit) && exit.Exited() {
		return exit.ExitStatus(), nil
	}
	return -1, err
}

// upgradeFailed says whether an exec over WebSocket failed before it
// started, so that it may be tried again over SPDY.
func upgradeFailed(err error) bool {
	return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
}
