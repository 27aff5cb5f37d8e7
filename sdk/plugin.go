package sdk

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pb "github.com/berthci/berth/sdk/proto/berth/executor/v1"
)

// The go-plugin handshake. The cookie never changes; it only tells a plugin
// binary started by hand that it is not meant to be run that way.
const (
	MagicCookieKey   = "BERTH_PLUGIN_MAGIC_COOKIE"
	MagicCookieValue = "berth-executor-6f1b0c1e9a0d4c7e"
	// PluginName is the name of the executor in go-plugin's plugin set.
	PluginName = "executor"
	// MaxChunk is the largest piece of output or archive data in one
	// message: under 32 KiB with its framing, so that gRPC takes each
	// message's buffer from its 32 KiB size class (a 64 KiB chunk lands in
	// the 1 MiB class, and gRPC zeroes all of it: a third of a plugin's CPU
	// when it streams output, measured in bench/).
	MaxChunk = 32<<10 - 64
)

// Handshake returns the go-plugin handshake berth and its plugins share.
func Handshake() plugin.HandshakeConfig {
	return plugin.HandshakeConfig{
		ProtocolVersion:  ProtocolVersion,
		MagicCookieKey:   MagicCookieKey,
		MagicCookieValue: MagicCookieValue,
	}
}

// PluginSets returns the versioned plugin sets for go-plugin: the host
// passes it as ClientConfig.VersionedPlugins (impl nil), Serve as
// ServeConfig.VersionedPlugins.
func PluginSets(impl Executor) map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{
		ProtocolVersion: {PluginName: &GRPCPlugin{Impl: impl}},
	}
}

// GRPCPlugin is the go-plugin glue: it serves an Executor over gRPC in the
// plugin and hands the host a *Client.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Executor
}

// GRPCServer registers the executor service.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterExecutorServer(s, newServer(p.Impl))
	return nil
}

// GRPCClient returns a *Client talking to the plugin.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return NewClient(c), nil
}

// GRPCOptions are the window sizes both ends use: larger than gRPC's
// defaults, so output streams are not throttled by flow control.
func GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InitialWindowSize(4 << 20),
		grpc.InitialConnWindowSize(8 << 20),
		grpc.MaxRecvMsgSize(8 << 20),
	}
}

// GRPCDialOptions are the host's counterpart of GRPCServerOptions.
func GRPCDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(4 << 20),
		grpc.WithInitialConnWindowSize(8 << 20),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(8 << 20)),
	}
}
