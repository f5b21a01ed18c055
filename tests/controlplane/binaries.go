package controlplane

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Binaries are the programs a control plane runs, all expected in one
// directory.
var Binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"}

const modulePath = "github.com/lf-edge/evelet"

// EnsureBinaries returns a directory holding every program in Binaries. A
// non-empty binDir is only checked. An empty one means: run
// hack/build-kube.sh of the evelet module (a warm run builds nothing) and
// use the directory it prints.
func EnsureBinaries(binDir string) (string, error) {
	if binDir == "" {
		var err error
		if binDir, err = buildBinaries(); err != nil {
			return "", err
		}
	}
	abs, err := filepath.Abs(binDir)
	if err != nil {
		return "", fmt.Errorf("controlplane: %w", err)
	}
	var missing []string
	for _, b := range Binaries {
		st, err := os.Stat(filepath.Join(abs, b))
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("controlplane: %s lacks %s (build them with hack/build-kube.sh)",
			abs, strings.Join(missing, ", "))
	}
	return abs, nil
}

func buildBinaries() (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	script := filepath.Join(root, "hack", "build-kube.sh")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("sh", script)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("controlplane: sh %s: %w\n%s", script, err, tail(stderr.String(), 40))
	}
	var last string
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	if last == "" {
		return "", fmt.Errorf("controlplane: sh %s printed no directory", script)
	}
	if !filepath.IsAbs(last) {
		last = filepath.Join(root, last) // the script runs from the module root
	}
	return last, nil
}

// ModuleRoot finds the evelet module's root directory: upwards from the
// working directory (go test runs in the package's directory), else from
// this source file's location.
func ModuleRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, d := range starts {
		for {
			if isEveletModule(filepath.Join(d, "go.mod")) {
				return d, nil
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return "", errors.New("controlplane: cannot find the " + modulePath + " module root (no go.mod above the working directory)")
}

func isEveletModule(goMod string) bool {
	f, err := os.Open(goMod)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) == 2 && fs[0] == "module" {
			return strings.Trim(fs[1], `"`) == modulePath
		}
	}
	return false
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"[...]"}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
