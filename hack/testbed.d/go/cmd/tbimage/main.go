// tbimage packs a directory into an OCI image archive (oci-layout, index.json,
// blobs/sha256/...) that `ctr images import` accepts, without any registry.
//
//	tbimage -name REF -out FILE.tar [-base BASE.tar] [-entrypoint JSON] [-cmd JSON]
//	        [-env K=V]... [-workdir DIR] [-user U] ROOTDIR
//
// The directory becomes one uncompressed layer. With -base, the layers and
// config of a previously packed archive come first and ROOTDIR is added on top.
package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

const (
	mtIndex    = "application/vnd.oci.image.index.v1+json"
	mtManifest = "application/vnd.oci.image.manifest.v1+json"
	mtConfig   = "application/vnd.oci.image.config.v1+json"
	mtLayer    = "application/vnd.oci.image.layer.v1.tar"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

type imageConfig struct {
	Architecture string         `json:"architecture"`
	OS           string         `json:"os"`
	Config       runConfig      `json:"config"`
	RootFS       rootFS         `json:"rootfs"`
	History      []historyEntry `json:"history,omitempty"`
}

type runConfig struct {
	User       string   `json:"User,omitempty"`
	Env        []string `json:"Env,omitempty"`
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
	WorkingDir string   `json:"WorkingDir,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type historyEntry struct {
	CreatedBy string `json:"created_by,omitempty"`
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	name := flag.String("name", "", "image reference, e.g. paddock.local/sandbox-base:testbed")
	out := flag.String("out", "", "output archive path")
	base := flag.String("base", "", "archive made by tbimage to build on")
	entrypoint := flag.String("entrypoint", "", "JSON array")
	cmd := flag.String("cmd", "", "JSON array")
	workdir := flag.String("workdir", "", "working directory")
	user := flag.String("user", "", "user")
	var envs multiFlag
	flag.Var(&envs, "env", "K=V (repeatable)")
	flag.Parse()
	if *name == "" || *out == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: tbimage -name REF -out FILE.tar [-base BASE.tar] [-entrypoint JSON] [-cmd JSON] [-env K=V]... [-workdir D] [-user U] ROOTDIR")
		os.Exit(2)
	}
	if err := run(*name, *out, *base, *entrypoint, *cmd, *workdir, *user, envs, flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "tbimage:", err)
		os.Exit(1)
	}
}

func run(name, out, base, entrypoint, cmd, workdir, user string, envs []string, root string) error {
	cfg := imageConfig{Architecture: "amd64", OS: "linux", RootFS: rootFS{Type: "layers"}}
	var layers []descriptor
	var baseBlobs map[string]bool
	if base != "" {
		var err error
		cfg, layers, err = readBase(base)
		if err != nil {
			return fmt.Errorf("base %s: %w", base, err)
		}
		baseBlobs = map[string]bool{}
		for _, l := range layers {
			baseBlobs[l.Digest] = true
		}
	}
	if len(envs) == 0 && len(cfg.Config.Env) == 0 {
		cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	cfg.Config.Env = mergeEnv(cfg.Config.Env, envs)
	if entrypoint != "" {
		cfg.Config.Entrypoint = nil
		if err := json.Unmarshal([]byte(entrypoint), &cfg.Config.Entrypoint); err != nil {
			return fmt.Errorf("-entrypoint: %w", err)
		}
		if cmd == "" {
			cfg.Config.Cmd = nil
		}
	}
	if cmd != "" {
		cfg.Config.Cmd = nil
		if err := json.Unmarshal([]byte(cmd), &cfg.Config.Cmd); err != nil {
			return fmt.Errorf("-cmd: %w", err)
		}
	}
	if workdir != "" {
		cfg.Config.WorkingDir = workdir
	}
	if user != "" {
		cfg.Config.User = user
	}

	tmp, err := os.CreateTemp(filepath.Dir(out), ".tbimage-layer-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, h)}
	if err := writeLayer(cw, root); err != nil {
		return fmt.Errorf("layer from %s: %w", root, err)
	}
	layer := descriptor{MediaType: mtLayer, Digest: digestOf(h), Size: cw.n}
	layers = append(layers, layer)
	cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, layer.Digest)
	cfg.History = append(cfg.History, historyEntry{CreatedBy: "tbimage " + root})

	cfgJSON, _ := json.Marshal(cfg)
	cfgDesc := blobDesc(mtConfig, cfgJSON)
	man := manifest{SchemaVersion: 2, MediaType: mtManifest, Config: cfgDesc, Layers: layers}
	manJSON, _ := json.Marshal(man)
	manDesc := blobDesc(mtManifest, manJSON)
	manDesc.Platform = &platform{Architecture: "amd64", OS: "linux"}
	manDesc.Annotations = map[string]string{
		"io.containerd.image.name":          name,
		"org.opencontainers.image.ref.name": name,
	}
	idxJSON, _ := json.Marshal(index{SchemaVersion: 2, MediaType: mtIndex, Manifests: []descriptor{manDesc}})

	partial := out + ".partial"
	f, err := os.Create(partial)
	if err != nil {
		return err
	}
	defer os.Remove(partial)
	tw := tar.NewWriter(f)
	put := func(path string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: path, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := put("index.json", idxJSON); err != nil {
		return err
	}
	if err := put(blobPath(cfgDesc.Digest), cfgJSON); err != nil {
		return err
	}
	if err := put(blobPath(manDesc.Digest), manJSON); err != nil {
		return err
	}
	if base != "" {
		if err := copyBlobs(tw, base, baseBlobs); err != nil {
			return err
		}
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: blobPath(layer.Digest), Mode: 0o644, Size: layer.Size, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := io.Copy(tw, tmp); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(partial, out)
}

func mergeEnv(have, add []string) []string {
	outEnv := append([]string(nil), have...)
	for _, kv := range add {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, old := range outEnv {
			if ok, _, _ := strings.Cut(old, "="); ok == k {
				outEnv[i] = kv
				replaced = true
			}
		}
		if !replaced {
			outEnv = append(outEnv, kv)
		}
	}
	return outEnv
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

func blobDesc(mt string, data []byte) descriptor {
	sum := sha256.Sum256(data)
	return descriptor{MediaType: mt, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(data))}
}

func blobPath(digest string) string { return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:") }

// writeLayer writes root as a tar stream in lexical order with numeric
// owners, keeping hard links, symlinks and device nodes.
func writeLayer(w io.Writer, root string) error {
	tw := tar.NewWriter(w)
	type inode struct{ dev, ino uint64 }
	seen := map[inode]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		info, err := os.Lstat(path)
		if err != nil {
			return err
		}
		if info.Mode()&os.ModeSocket != 0 {
			return nil
		}
		link := ""
		if info.Mode()&os.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		hdr.AccessTime, hdr.ChangeTime = hdr.ModTime, hdr.ModTime
		hdr.Format = tar.FormatPAX
		if st, ok := info.Sys().(*syscall.Stat_t); ok && info.Mode().IsRegular() && st.Nlink > 1 {
			key := inode{uint64(st.Dev), st.Ino}
			if first, ok := seen[key]; ok {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				hdr.Size = 0
				return tw.WriteHeader(hdr)
			}
			seen[key] = hdr.Name
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.CopyN(tw, f, info.Size()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// readBase returns the config and layer descriptors of a tbimage archive.
func readBase(path string) (imageConfig, []descriptor, error) {
	var cfg imageConfig
	small, err := readSmallFiles(path)
	if err != nil {
		return cfg, nil, err
	}
	var idx index
	if err := json.Unmarshal(small["index.json"], &idx); err != nil || len(idx.Manifests) != 1 {
		return cfg, nil, errors.New("index.json must list exactly one manifest")
	}
	var man manifest
	if err := json.Unmarshal(small[blobPath(idx.Manifests[0].Digest)], &man); err != nil {
		return cfg, nil, fmt.Errorf("manifest: %w", err)
	}
	if err := json.Unmarshal(small[blobPath(man.Config.Digest)], &cfg); err != nil {
		return cfg, nil, fmt.Errorf("config: %w", err)
	}
	return cfg, man.Layers, nil
}

func readSmallFiles(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files, nil
		}
		if err != nil {
			return nil, err
		}
		if hdr.Size <= 1<<20 {
			data, err := io.ReadAll(tr)
			if err != nil {
				return nil, err
			}
			files[hdr.Name] = data
		}
	}
}

func copyBlobs(tw *tar.Writer, path string, want map[string]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		d := "sha256:" + strings.TrimPrefix(hdr.Name, "blobs/sha256/")
		if !want[d] {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: hdr.Name, Mode: 0o644, Size: hdr.Size, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
}
