// Command fakevbox is a stand-in for VirtualBox's VBoxManage, for the
// virtualbox executor's tests: VirtualBox cannot be installed where they
// run (no package, no hardware virtualisation).
//
// It implements the subcommands the executor uses, checking every
// argument against the syntax VirtualBox's manual documents for VBoxManage
// (7.0, and the older spellings 6.1 documents): an unknown option, a
// missing value or a malformed one is a syntax error (exit status 2), as
// is an option the stand-in does not implement, so the executor cannot
// drift from the documented command line. The machines' state lives in a
// JSON file next to the binary (fakevbox.json, seeded by the tests), and
// every invocation is appended to fakevbox.log (one JSON array of
// arguments per line) so tests can assert the exact command lines.
//
// "Starting" a machine starts a real sshd on this machine, listening on
// the host port of the machine's NAT rule for guest port 22 (127.0.0.1
// only), with the sshd_config the base machine's "guest" describes; the
// guest's processes are everything that sshd starts (marked with
// FAKEVBOX_GUEST in their environment, which sshd's SetEnv puts there).
// "Powering off" kills that sshd, its descendants and every marked process.
// So everything after boot is real.
//
//	VBoxManage --version
//	VBoxManage list [--long|-l] [--sorted|-s] vms
//	VBoxManage showvminfo <vm> [--details] [--machinereadable] [--log=<n>]
//	VBoxManage clonevm <vm> [--basefolder=<dir>] [--groups=<g>,...] [--mode=machine|machinechildren|all]
//	                        [--name=<name>] [--options=<opt>,...] [--register] [--snapshot=<name>] [--uuid=<uuid>]
//	VBoxManage modifyvm <vm> --natpf<N> [<rule>],tcp|udp,[<hostip>],<hostport>,[<guestip>],<guestport>
//	VBoxManage modifyvm <vm> --natpf<N> delete <rule>        (also --nat-pf<N>)
//	VBoxManage startvm <vm>... [--type=gui|headless|sdl|separate] [--putenv=<name>[=<value>]]
//	VBoxManage controlvm <vm> poweroff
//	VBoxManage unregistervm <vm> [--delete|--delete-all]
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Exit statuses, as VBoxManage's (RTEXITCODE_FAILURE, RTEXITCODE_SYNTAX).
const (
	exitFailure = 1
	exitSyntax  = 2
)

// State is the stand-in's whole state.
type State struct {
	VMs []*VM `json:"vms"`
}

// VM is one machine.
type VM struct {
	Name      string   `json:"name"`
	UUID      string   `json:"uuid"`
	State     string   `json:"state"` // poweroff, running
	Snapshots []string `json:"snapshots,omitempty"`
	// CurrentSnapshot is the snapshot the current state is based on.
	CurrentSnapshot string    `json:"current_snapshot,omitempty"`
	NIC1            string    `json:"nic1"` // nat, none, …
	Forwarding      []NATRule `json:"forwarding,omitempty"`
	Guest           Guest     `json:"guest"`
	BaseFolder      string    `json:"base_folder,omitempty"`
	// ClonedFrom and LinkedSnapshot describe how a clone was made.
	ClonedFrom     string `json:"cloned_from,omitempty"`
	LinkedSnapshot string `json:"linked_snapshot,omitempty"`
	// GuestPid and GuestStart identify the running guest's sshd.
	GuestPid   int    `json:"guest_pid,omitempty"`
	GuestStart uint64 `json:"guest_start,omitempty"`
}

// NATRule is a port-forwarding rule of NIC 1.
type NATRule struct {
	Name      string `json:"name"`
	Proto     string `json:"proto"`
	HostIP    string `json:"host_ip"`
	HostPort  int    `json:"host_port"`
	GuestIP   string `json:"guest_ip"`
	GuestPort int    `json:"guest_port"`
}

func (r NATRule) String() string {
	return fmt.Sprintf("%s,%s,%s,%d,%s,%d", r.Name, r.Proto, r.HostIP, r.HostPort, r.GuestIP, r.GuestPort)
}

// Guest is what runs in a machine: an sshd with this configuration
// (without Port and ListenAddress), started BootDelayMS after startvm.
type Guest struct {
	SSHDConfig  string `json:"sshd_config"`
	BootDelayMS int    `json:"boot_delay_ms"`
}

// syntaxError is a command line VBoxManage would refuse.
type syntaxError struct{ msg string }

func (e syntaxError) Error() string { return e.msg }

func syntaxf(format string, args ...any) error { return syntaxError{fmt.Sprintf(format, args...)} }

func main() {
	code, err := run(os.Args[1:], os.Stdout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "VBoxManage: error: %s\n", err)
		var se syntaxError
		if errors.As(err, &se) {
			code = exitSyntax
		} else if code == 0 {
			code = exitFailure
		}
	}
	os.Exit(code)
}

// home is the folder of the binary: state, log, machines.
func home() string {
	exe, err := os.Executable()
	if err != nil {
		return "."
	}
	return filepath.Dir(exe)
}

func run(args []string, stdout io.Writer) (int, error) {
	dir := home()
	lock, err := os.OpenFile(filepath.Join(dir, "fakevbox.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return exitFailure, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return exitFailure, err
	}
	if err := logCall(dir, args); err != nil {
		return exitFailure, err
	}
	if len(args) == 0 {
		return 0, syntaxf("no command given")
	}
	if args[0] == "--version" || args[0] == "-v" || args[0] == "-V" {
		if len(args) > 1 {
			return 0, syntaxf("--version takes no arguments")
		}
		fmt.Fprintln(stdout, "7.0.20r163906")
		return 0, nil
	}
	st, err := load(dir)
	if err != nil {
		return exitFailure, err
	}
	cmds := map[string]func(*State, []string, io.Writer) error{
		"list":         cmdList,
		"showvminfo":   cmdShowVMInfo,
		"clonevm":      cmdCloneVM,
		"modifyvm":     cmdModifyVM,
		"startvm":      cmdStartVM,
		"controlvm":    cmdControlVM,
		"unregistervm": cmdUnregisterVM,
	}
	f, ok := cmds[args[0]]
	if !ok {
		return 0, syntaxf("Invalid command '%s' (the stand-in implements --version, %s)", args[0], strings.Join(slices.Sorted(maps.Keys(cmds)), ", "))
	}
	if err := f(st, args[1:], stdout); err != nil {
		return 0, err
	}
	return 0, save(dir, st)
}

func logCall(dir string, args []string) error {
	f, err := os.OpenFile(filepath.Join(dir, "fakevbox.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if args == nil {
		args = []string{}
	}
	b, _ := json.Marshal(args)
	_, err = f.Write(append(b, '\n'))
	return err
}

func load(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, "fakevbox.json"))
	if errors.Is(err, os.ErrNotExist) {
		return &State{}, nil
	}
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("the stand-in's state %s: %w", filepath.Join(dir, "fakevbox.json"), err)
	}
	return &st, nil
}

func save(dir string, st *State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "fakevbox.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "fakevbox.json"))
}

// find returns the registered machine named or identified by ref.
func (st *State) find(ref string) (*VM, error) {
	for _, vm := range st.VMs {
		if vm.Name == ref || vm.UUID == ref {
			return vm, nil
		}
	}
	return nil, fmt.Errorf("Could not find a registered machine named '%s'", ref)
}

// opts is a parsed command line: positional arguments and options.
type opts struct {
	pos  []string
	vals map[string][]string
}

func (o opts) has(name string) bool { _, ok := o.vals[name]; return ok }

func (o opts) last(name string) string {
	v := o.vals[name]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// parse reads args as VBoxManage's option parser does: "--opt value",
// "--opt=value" and "--opt:value" for options that take a value; short
// aliases map to long names. spec maps each option to whether it takes a
// value.
func parse(args []string, spec map[string]bool, short map[string]string) (opts, error) {
	o := opts{vals: map[string][]string{}}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			o.pos = append(o.pos, a)
			continue
		}
		name, value, inline := a, "", false
		if k := strings.IndexAny(a, "=:"); k > 0 && strings.HasPrefix(a, "--") {
			name, value, inline = a[:k], a[k+1:], true
		}
		if long, ok := short[name]; ok {
			name = long
		}
		takes, ok := spec[name]
		if !ok {
			return o, syntaxf("Unknown option: %s", name)
		}
		switch {
		case takes && !inline:
			if i+1 >= len(args) {
				return o, syntaxf("Option %s requires a value", name)
			}
			i++
			value = args[i]
		case !takes && inline:
			return o, syntaxf("Option %s takes no value", name)
		}
		o.vals[name] = append(o.vals[name], value)
	}
	return o, nil
}

func oneVM(st *State, o opts, usage string) (*VM, error) {
	if len(o.pos) != 1 {
		return nil, syntaxf("%s (got %d machines: %q)", usage, len(o.pos), o.pos)
	}
	return st.find(o.pos[0])
}

func cmdList(st *State, args []string, w io.Writer) error {
	o, err := parse(args, map[string]bool{"--long": false, "--sorted": false}, map[string]string{"-l": "--long", "-s": "--sorted"})
	if err != nil {
		return err
	}
	if len(o.pos) != 1 {
		return syntaxf("list: name one kind of object (got %q)", o.pos)
	}
	if o.pos[0] != "vms" {
		return syntaxf("list %s: the stand-in lists only vms", o.pos[0])
	}
	vms := slices.Clone(st.VMs)
	if o.has("--sorted") {
		slices.SortFunc(vms, func(a, b *VM) int { return strings.Compare(a.Name, b.Name) })
	}
	for _, vm := range vms {
		fmt.Fprintf(w, "%q {%s}\n", vm.Name, vm.UUID)
	}
	return nil
}

func cmdShowVMInfo(st *State, args []string, w io.Writer) error {
	o, err := parse(args, map[string]bool{"--details": false, "--machinereadable": false, "--log": true}, nil)
	if err != nil {
		return err
	}
	vm, err := oneVM(st, o, "showvminfo <uuid|vmname>")
	if err != nil {
		return err
	}
	if o.has("--log") {
		return syntaxf("showvminfo --log: the stand-in keeps no logs")
	}
	if !o.has("--machinereadable") {
		fmt.Fprintf(w, "Name:                        %s\nUUID:                        %s\nState:                       %s\n", vm.Name, vm.UUID, vm.State)
		return nil
	}
	fmt.Fprintf(w, "name=%q\nUUID=%q\nVMState=%q\nnic1=%q\n", vm.Name, vm.UUID, vm.State, vm.NIC1)
	for i, r := range vm.Forwarding {
		fmt.Fprintf(w, "Forwarding(%d)=%q\n", i, r.String())
	}
	if vm.CurrentSnapshot != "" {
		fmt.Fprintf(w, "CurrentSnapshotName=%q\n", vm.CurrentSnapshot)
	}
	return nil
}

var cloneOptions = []string{"link", "keepallmacs", "keepnatmacs", "keepdisknames", "keephwuuids"}

func cmdCloneVM(st *State, args []string, w io.Writer) error {
	o, err := parse(args, map[string]bool{
		"--basefolder": true, "--groups": true, "--mode": true, "--name": true,
		"--options": true, "--register": false, "--snapshot": true, "--uuid": true,
	}, nil)
	if err != nil {
		return err
	}
	src, err := oneVM(st, o, "clonevm <uuid|vmname>")
	if err != nil {
		return err
	}
	switch mode := o.last("--mode"); mode {
	case "", "machine", "machinechildren", "all":
	default:
		return syntaxf("Invalid clone mode '%s' (machine, machinechildren or all)", mode)
	}
	linked := false
	for _, list := range o.vals["--options"] {
		for _, opt := range strings.Split(list, ",") {
			if !slices.Contains(cloneOptions, strings.ToLower(opt)) {
				return syntaxf("Invalid clone options '%s' (%s)", list, strings.Join(cloneOptions, ", "))
			}
			linked = linked || strings.EqualFold(opt, "link")
		}
	}
	snap := o.last("--snapshot")
	if o.has("--snapshot") && !slices.Contains(src.Snapshots, snap) {
		return fmt.Errorf("Could not find a snapshot named '%s'", snap)
	}
	if linked && snap == "" {
		return errors.New("Linked clones can only be created from a snapshot (--snapshot)")
	}
	name := o.last("--name")
	if name == "" {
		name = src.Name + " Clone"
	}
	if _, err := st.find(name); err == nil {
		return fmt.Errorf("Machine settings file for '%s' already exists", name)
	}
	if folder := o.last("--basefolder"); o.has("--basefolder") && !filepath.IsAbs(folder) {
		return fmt.Errorf("The base folder '%s' must be an absolute path", folder)
	}
	fmt.Fprintln(w, "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%")
	fmt.Fprintf(w, "Machine has been successfully cloned as %q\n", name)
	if !o.has("--register") {
		return nil // VirtualBox only writes its settings file
	}
	clone := &VM{
		Name: name, UUID: newUUID(), State: "poweroff", NIC1: src.NIC1,
		Forwarding: slices.Clone(src.Forwarding), Guest: src.Guest,
		BaseFolder: o.last("--basefolder"), ClonedFrom: src.Name,
	}
	if linked {
		clone.LinkedSnapshot = snap
	}
	st.VMs = append(st.VMs, clone)
	return nil
}

var natpfOption = regexp.MustCompile(`^--nat-?pf([1-8])$`)

func cmdModifyVM(st *State, args []string, w io.Writer) error {
	if len(args) == 0 {
		return syntaxf("modifyvm <uuid|vmname> <options>")
	}
	vm, err := st.find(args[0])
	if err != nil {
		return err
	}
	if len(args) == 1 {
		return syntaxf("modifyvm %s: no option given", args[0])
	}
	rest := args[1:]
	for i := 0; i < len(rest); i++ {
		name, value, inline := rest[i], "", false
		if k := strings.IndexAny(name, "=:"); k > 0 {
			name, value, inline = name[:k], name[k+1:], true
		}
		m := natpfOption.FindStringSubmatch(name)
		if m == nil {
			if strings.HasPrefix(name, "--") {
				return syntaxf("modifyvm option %s: not implemented by the stand-in (it implements --natpf<1-8> and --nat-pf<1-8>)", name)
			}
			return syntaxf("modifyvm: unexpected argument '%s'", rest[i])
		}
		if !inline {
			if i+1 >= len(rest) {
				return syntaxf("Option %s requires a value", name)
			}
			i++
			value = rest[i]
		}
		if vm.State == "running" {
			return fmt.Errorf("The machine '%s' is already locked for a session (or being unlocked)", vm.Name)
		}
		if m[1] != "1" {
			return syntaxf("modifyvm %s: the stand-in's machines have only NIC 1", name)
		}
		if value == "delete" {
			if i+1 >= len(rest) {
				return syntaxf("Option %s delete requires a rule name", name)
			}
			i++
			k := slices.IndexFunc(vm.Forwarding, func(r NATRule) bool { return r.Name == rest[i] })
			if k < 0 {
				return fmt.Errorf("A NAT rule named '%s' does not exist", rest[i])
			}
			vm.Forwarding = slices.Delete(vm.Forwarding, k, k+1)
			continue
		}
		rule, err := parseNATRule(value)
		if err != nil {
			return err
		}
		for _, r := range vm.Forwarding {
			if r.Name == rule.Name {
				return fmt.Errorf("A NAT rule of this name already exists")
			}
			if r.Proto == rule.Proto && r.HostIP == rule.HostIP && r.HostPort == rule.HostPort {
				return fmt.Errorf("A NAT rule for this host port already exists")
			}
		}
		vm.Forwarding = append(vm.Forwarding, rule)
	}
	return nil
}

// parseNATRule reads [<rulename>],tcp|udp,[<hostip>],<hostport>,[<guestip>],<guestport>.
func parseNATRule(s string) (NATRule, error) {
	f := strings.Split(s, ",")
	if len(f) != 6 {
		return NATRule{}, syntaxf("Invalid NAT rule '%s': want [<rulename>],tcp|udp,[<hostip>],<hostport>,[<guestip>],<guestport>", s)
	}
	r := NATRule{Name: f[0], Proto: f[1], HostIP: f[2], GuestIP: f[4]}
	if r.Proto != "tcp" && r.Proto != "udp" {
		return r, syntaxf("Invalid NAT rule '%s': protocol must be tcp or udp", s)
	}
	for _, ip := range []string{r.HostIP, r.GuestIP} {
		if ip != "" && net.ParseIP(ip) == nil {
			return r, syntaxf("Invalid NAT rule '%s': '%s' is not an IP address", s, ip)
		}
	}
	var err error
	if r.HostPort, err = port(f[3]); err != nil {
		return r, syntaxf("Invalid NAT rule '%s': host port: %v", s, err)
	}
	if r.GuestPort, err = port(f[5]); err != nil {
		return r, syntaxf("Invalid NAT rule '%s': guest port: %v", s, err)
	}
	if r.Name == "" {
		r.Name = fmt.Sprintf("%s_%d_%d", r.Proto, r.HostPort, r.GuestPort)
	}
	return r, nil
}

func port(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("'%s' is not a port", s)
	}
	return n, nil
}

func cmdStartVM(st *State, args []string, w io.Writer) error {
	o, err := parse(args, map[string]bool{"--type": true, "--putenv": true}, map[string]string{"-E": "--putenv"})
	if err != nil {
		return err
	}
	if len(o.pos) == 0 {
		return syntaxf("startvm <uuid|vmname>... [--type=gui|headless|sdl|separate]")
	}
	switch t := o.last("--type"); t {
	case "", "gui", "headless", "sdl", "separate":
	default:
		return syntaxf("Invalid session type '%s' (gui, headless, sdl or separate)", t)
	}
	for _, ref := range o.pos {
		vm, err := st.find(ref)
		if err != nil {
			return err
		}
		if vm.State == "running" {
			return fmt.Errorf("The machine '%s' is already locked by a session (or being locked or unlocked)", vm.Name)
		}
		fmt.Fprintf(w, "Waiting for VM %q to power on...\n", vm.Name)
		if err := boot(vm); err != nil {
			return err
		}
		vm.State = "running"
		fmt.Fprintf(w, "VM %q has been successfully started.\n", vm.Name)
	}
	return nil
}

// boot starts the guest: an sshd on the host port forwarded to guest port
// 22, if NIC 1 is NAT and has such a rule (a guest nobody can reach boots
// all the same).
func boot(vm *VM) error {
	var rule *NATRule
	for i, r := range vm.Forwarding {
		if r.Proto == "tcp" && r.GuestPort == 22 {
			rule = &vm.Forwarding[i]
		}
	}
	if vm.NIC1 != "nat" || rule == nil {
		return nil
	}
	if rule.HostIP != "127.0.0.1" {
		return fmt.Errorf("the stand-in forwards only from 127.0.0.1, and the rule %s listens on %q (all interfaces when empty)", rule, rule.HostIP)
	}
	dir := filepath.Join(home(), "vms", vm.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	cfgFile := filepath.Join(dir, "sshd_config")
	// Every session of the guest, and what it starts, carries the marker:
	// powering off kills them also when they are no longer below the sshd
	// (a session whose connection closed leaves its command running).
	cfg := fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\nSetEnv %s=%q\n%s", rule.HostPort, guestMarker, dir, vm.Guest.SSHDConfig)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "guest.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	script := fmt.Sprintf(`sleep %d.%03d; exec /usr/sbin/sshd -D -e -f "$1"`, vm.Guest.BootDelayMS/1000, vm.Guest.BootDelayMS%1000)
	cmd := exec.Command("/bin/sh", "-c", script, "guest", cfgFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the guest of %s: %w", vm.Name, err)
	}
	vm.GuestPid = cmd.Process.Pid
	vm.GuestStart, _ = startTime(vm.GuestPid)
	_ = cmd.Process.Release()
	return nil
}

func cmdControlVM(st *State, args []string, w io.Writer) error {
	if len(args) < 2 {
		return syntaxf("controlvm <uuid|vmname> <subcommand>")
	}
	vm, err := st.find(args[0])
	if err != nil {
		return err
	}
	if args[1] != "poweroff" {
		return syntaxf("controlvm %s: not implemented by the stand-in (it implements poweroff)", args[1])
	}
	if len(args) > 2 {
		return syntaxf("controlvm poweroff takes no arguments (got %q)", args[2:])
	}
	if vm.State != "running" {
		return fmt.Errorf("Machine '%s' is not currently running", vm.Name)
	}
	fmt.Fprintln(w, "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%")
	powerOff(vm)
	return nil
}

func powerOff(vm *VM) {
	root := 0
	if vm.GuestPid > 0 {
		if start, ok := startTime(vm.GuestPid); ok && start == vm.GuestStart {
			root = vm.GuestPid
		}
	}
	killGuest(root, guestMarker+"="+filepath.Join(home(), "vms", vm.Name))
	vm.State, vm.GuestPid, vm.GuestStart = "poweroff", 0, 0
}

func cmdUnregisterVM(st *State, args []string, w io.Writer) error {
	o, err := parse(args, map[string]bool{"--delete": false, "--delete-all": false}, nil)
	if err != nil {
		return err
	}
	vm, err := oneVM(st, o, "unregistervm <uuid|vmname> [--delete|--delete-all]")
	if err != nil {
		return err
	}
	if vm.State == "running" {
		return fmt.Errorf("Cannot unregister the machine '%s' while it is locked", vm.Name)
	}
	st.VMs = slices.DeleteFunc(st.VMs, func(v *VM) bool { return v == vm })
	if o.has("--delete") || o.has("--delete-all") {
		fmt.Fprintln(w, "0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%")
		return os.RemoveAll(filepath.Join(home(), "vms", vm.Name))
	}
	return nil
}

// guestMarker is the environment variable that marks a guest's processes.
const guestMarker = "FAKEVBOX_GUEST"

// killGuest SIGKILLs the guest's sshd (root, when running), its
// descendants and every process whose environment holds marker
// (NAME=value), until none is left.
func killGuest(root int, marker string) {
	for range 100 {
		var pids []int
		if root > 0 {
			pids = descendants(root)
			if alive(root) {
				pids = append(pids, root)
			}
		}
		pids = append(pids, marked(marker)...)
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// descendants lists the running descendants of pid.
func descendants(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(p); len(f) > 1 && f[0] != "Z" && f[0] != "X" {
			if ppid, err := strconv.Atoi(f[1]); err == nil {
				children[ppid] = append(children[ppid], p)
			}
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// marked lists the running processes whose environment holds marker.
func marked(marker string) []int {
	entries, _ := os.ReadDir("/proc")
	want := []byte(marker + "\x00")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !alive(pid) {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err == nil && (bytes.HasPrefix(env, want) || bytes.Contains(env, append([]byte{0}, want...))) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func alive(pid int) bool {
	f := statFields(pid)
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// statFields returns the fields of /proc/pid/stat after the command name
// (state, ppid, …).
func statFields(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// startTime is a process's start time (clock ticks after boot), which
// tells it apart from a later process with the same pid.
func startTime(pid int) (uint64, bool) {
	f := statFields(pid)
	if len(f) < 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(f[19], 10, 64)
	return n, err == nil
}

func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
