package sdk

import (
	"time"

	pb "github.com/berthci/berth/sdk/proto/berth/executor/v1"
)

func handleToProto(h Handle) *pb.Handle {
	return &pb.Handle{JobId: h.JobID, Version: int32(h.Version), State: h.State, BuildDir: h.BuildDir}
}

func handleFromProto(h *pb.Handle) Handle {
	if h == nil {
		return Handle{}
	}
	return Handle{JobID: h.JobId, Version: int(h.Version), State: h.State, BuildDir: h.BuildDir}
}

func imageToProto(i Image) *pb.Image {
	return &pb.Image{Name: i.Name, Entrypoint: i.Entrypoint, PullPolicy: i.PullPolicy}
}

func imageFromProto(i *pb.Image) Image {
	if i == nil {
		return Image{}
	}
	return Image{Name: i.Name, Entrypoint: i.Entrypoint, PullPolicy: i.PullPolicy}
}

func jobToProto(j Job) *pb.Job {
	p := &pb.Job{
		Id: j.ID, Name: j.Name, Image: imageToProto(j.Image), TimeoutMs: j.Timeout.Milliseconds(),
		Labels: j.Labels, DownloadPaths: j.DownloadPaths, ExecutorVariables: j.ExecutorVariables, Shell: j.Shell,
	}
	for _, s := range j.Services {
		p.Services = append(p.Services, &pb.Service{Image: imageToProto(s.Image), Aliases: s.Aliases, Command: s.Command, Variables: s.Variables})
	}
	for _, c := range j.Credentials {
		p.Credentials = append(p.Credentials, &pb.Credential{Registry: c.Registry, Username: c.Username, Password: c.Password})
	}
	return p
}

func jobFromProto(p *pb.Job) Job {
	if p == nil {
		return Job{}
	}
	j := Job{
		ID: p.Id, Name: p.Name, Image: imageFromProto(p.Image), Timeout: time.Duration(p.TimeoutMs) * time.Millisecond,
		Labels: p.Labels, DownloadPaths: p.DownloadPaths, ExecutorVariables: p.ExecutorVariables, Shell: p.Shell,
	}
	for _, s := range p.Services {
		j.Services = append(j.Services, Service{Image: imageFromProto(s.Image), Aliases: s.Aliases, Command: s.Command, Variables: s.Variables})
	}
	for _, c := range p.Credentials {
		j.Credentials = append(j.Credentials, Credential{Registry: c.Registry, Username: c.Username, Password: c.Password})
	}
	return j
}

func stepToProto(s Step) *pb.Step {
	return &pb.Step{
		Name: s.Name, Script: s.Script, Shell: s.Shell,
		GracePeriodMs: s.GracePeriod.Milliseconds(), TimeoutMs: s.Timeout.Milliseconds(),
		When: pb.Step_When(s.When),
	}
}

func stepFromProto(p *pb.Step) Step {
	return Step{
		Name: p.Name, Script: p.Script, Shell: p.Shell,
		GracePeriod: time.Duration(p.GracePeriodMs) * time.Millisecond,
		Timeout:     time.Duration(p.TimeoutMs) * time.Millisecond,
		When:        When(p.When),
	}
}

func infoToProto(i Info) *pb.InfoResponse {
	c := i.Capabilities
	p := &pb.InfoResponse{
		Name: i.Name, Version: i.Version, Description: i.Description, ProtocolVersion: int32(i.ProtocolVersion),
		Capabilities: &pb.Capabilities{
			Image: c.Image, Services: c.Services, CancelGracefully: c.CancelGracefully, OneShot: c.OneShot,
			Interactive: c.Interactive, Isolated: c.Isolated, Shells: c.Shells,
			MaxJobTimeoutMs: c.MaxJobTimeout.Milliseconds(),
		},
	}
	for _, f := range i.Config {
		p.Config = append(p.Config, &pb.ConfigField{Name: f.Name, Type: f.Type, Default: f.Default, Description: f.Description, Required: f.Required, Secret: f.Secret})
	}
	return p
}

func infoFromProto(p *pb.InfoResponse) Info {
	i := Info{Name: p.Name, Version: p.Version, Description: p.Description, ProtocolVersion: int(p.ProtocolVersion)}
	if c := p.Capabilities; c != nil {
		i.Capabilities = Capabilities{
			Image: c.Image, Services: c.Services, CancelGracefully: c.CancelGracefully, OneShot: c.OneShot,
			Interactive: c.Interactive, Isolated: c.Isolated, Shells: c.Shells,
			MaxJobTimeout: time.Duration(c.MaxJobTimeoutMs) * time.Millisecond,
		}
	}
	for _, f := range p.Config {
		i.Config = append(i.Config, ConfigField{Name: f.Name, Type: f.Type, Default: f.Default, Description: f.Description, Required: f.Required, Secret: f.Secret})
	}
	return i
}
