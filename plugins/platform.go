package plugins

import (
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"fmt"
	"runtime"
	"strings"
)

// Platform is an operating system and processor architecture, in Go's
// names (linux/amd64, darwin/arm64).
type Platform struct {
	OS   string
	Arch string
}

// HostPlatform is the platform berth runs on.
func HostPlatform() Platform { return Platform{OS: runtime.GOOS, Arch: runtime.GOARCH} }

func (p Platform) String() string { return p.OS + "/" + p.Arch }

// ParsePlatform reads "os/arch".
func ParsePlatform(s string) (Platform, error) {
	os, arch, ok := strings.Cut(s, "/")
	if !ok || os == "" || arch == "" || strings.Contains(arch, "/") {
		return Platform{}, fmt.Errorf("platform %q: write it as OS/ARCH, e.g. linux/amd64", s)
	}
	return Platform{OS: os, Arch: arch}, nil
}

// DetectPlatform reads the platform an executable was built for from its
// header (ELF, Mach-O or PE). Scripts and unknown formats are an error:
// their platform has to be given.
func DetectPlatform(path string) (Platform, error) {
	if f, err := elf.Open(path); err == nil {
		defer f.Close()
		pl, err := elfPlatform(f)
		if err != nil {
			return Platform{}, fmt.Errorf("%s is %w", path, err)
		}
		return pl, nil
	}
	if f, err := macho.Open(path); err == nil {
		defer f.Close()
		arch, ok := map[macho.Cpu]string{macho.CpuAmd64: "amd64", macho.CpuArm64: "arm64"}[f.Cpu]
		if !ok {
			return Platform{}, fmt.Errorf("%s is a Mach-O executable for CPU %v, which berth does not know", path, f.Cpu)
		}
		return Platform{OS: "darwin", Arch: arch}, nil
	}
	if f, err := pe.Open(path); err == nil {
		defer f.Close()
		arch, ok := map[uint16]string{
			pe.IMAGE_FILE_MACHINE_AMD64: "amd64", pe.IMAGE_FILE_MACHINE_ARM64: "arm64", pe.IMAGE_FILE_MACHINE_I386: "386",
		}[f.Machine]
		if !ok {
			return Platform{}, fmt.Errorf("%s is a PE executable for machine %#x, which berth does not know", path, f.Machine)
		}
		return Platform{OS: "windows", Arch: arch}, nil
	}
	return Platform{}, fmt.Errorf("cannot tell which OS/ARCH %s is built for (it is not an ELF, Mach-O or PE executable): give it with --platform", path)
}

func elfPlatform(f *elf.File) (Platform, error) {
	os := "linux"
	switch f.OSABI {
	case elf.ELFOSABI_FREEBSD:
		os = "freebsd"
	case elf.ELFOSABI_NETBSD:
		os = "netbsd"
	case elf.ELFOSABI_OPENBSD:
		os = "openbsd"
	}
	var arch string
	switch f.Machine {
	case elf.EM_X86_64:
		arch = "amd64"
	case elf.EM_AARCH64:
		arch = "arm64"
	case elf.EM_386:
		arch = "386"
	case elf.EM_ARM:
		arch = "arm"
	case elf.EM_RISCV:
		arch = "riscv64"
	case elf.EM_S390:
		arch = "s390x"
	case elf.EM_PPC64:
		arch = "ppc64"
		if f.ByteOrder.String() == "LittleEndian" {
			arch = "ppc64le"
		}
	case elf.EM_LOONGARCH:
		arch = "loong64"
	default:
		return Platform{}, fmt.Errorf("an ELF executable for machine %s, which berth does not know: give its platform with --platform", f.Machine)
	}
	return Platform{OS: os, Arch: arch}, nil
}
