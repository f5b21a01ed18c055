package eve

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/lf-edge/evelet/eve/evecrypt"
	"github.com/lf-edge/evelet/eve/pubsub"
)

// ControllerCertDirs is where zedagent publishes the controller
// certificates on this EVE release, in search order (Release has the
// table per release line):
//   - a release that publishes them under <Run> (16.12.0 and later,
//     16.0.1-rc1 and later 16.0.x, 14.5.4-rc1 and later 14.5.x, snapshot
//     builds): <Run>/zedagent/ControllerCert only. The <Persist>/status
//     copy is a leftover of an older release.
//   - older releases: <Persist>/status/zedagent/ControllerCert (after <Run>,
//     which such a release does not have).
//   - unknown version: both, <Run> first. A certificate is looked up by its
//     hash, so an old copy can only supply the very certificate asked for.
func ControllerCertDirs(root pubsub.Root, rel Release) []string {
	if rel.Known() && !rel.PersistentControllerCert() {
		return []string{root.ControllerCertDir()}
	}
	return []string{root.ControllerCertDir(), root.ControllerCertDirPersistent()}
}

// ControllerCerts is what LoadControllerCerts found.
type ControllerCerts struct {
	Certs []evecrypt.ControllerCert
	// Problems names the files that could not be used, for error messages.
	Problems []string
}

// LoadControllerCerts reads the ControllerCert pubsub items (pillar
// types.ControllerCert, key hex(CertHash)) in dirs. Directories that do not
// exist are skipped; an unreadable or inconsistent file is listed in
// Problems and skipped, as EVE's pubsub skips it. The error is only for
// when no directory can be listed at all.
func LoadControllerCerts(dirs []string) (ControllerCerts, error) {
	var out ControllerCerts
	listed := 0
	for _, dir := range dirs {
		ents, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			out.Problems = append(out.Problems, err.Error())
			continue
		}
		listed++
		for _, e := range ents {
			key, ok := strings.CutSuffix(e.Name(), ".json")
			if !ok || e.IsDir() {
				continue // .json.bak backups, temp files
			}
			p := filepath.Join(dir, e.Name())
			c, err := readControllerCert(p, key)
			if err != nil {
				out.Problems = append(out.Problems, err.Error())
				continue
			}
			out.Certs = append(out.Certs, c)
		}
	}
	if listed == 0 {
		return out, fmt.Errorf("no controller certificates published in %s (zedagent publishes them once it has fetched or restored them)%s",
			strings.Join(dirs, " or "), problemText(out.Problems))
	}
	return out, nil
}

func readControllerCert(path, key string) (evecrypt.ControllerCert, error) {
	var c evecrypt.ControllerCert
	b, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("controller certificate %s: %w", path, err)
	}
	// EVE looks the certificate up by key (pillar cipher/handlecipher.go),
	// and zedagent's key is hex(CertHash): the two must agree.
	if len(c.CertHash) == 0 {
		if c.CertHash, err = hex.DecodeString(key); err != nil {
			return c, fmt.Errorf("controller certificate %s: no CertHash and the key is not hex", path)
		}
	} else if !strings.EqualFold(hex.EncodeToString(c.CertHash), key) {
		return c, fmt.Errorf("controller certificate %s: key %s but CertHash %x", path, key, c.CertHash)
	}
	return c, nil
}

func problemText(p []string) string {
	if len(p) == 0 {
		return ""
	}
	p = append([]string(nil), p...)
	sort.Strings(p)
	return "; unusable: " + strings.Join(p, "; ")
}
