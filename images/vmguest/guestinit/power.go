package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Linux input event constants (linux/input-event-codes.h).
const (
	evKey    = 0x01
	keyPower = 116
)

// watchPowerButton powers the guest off when an ACPI "Power Button" input
// device reports a key press (QEMU's system_powerdown). The ACPI button
// driver (module button) registers the device; evdev exposes it as
// /dev/input/eventN.
func watchPowerButton() {
	names, _ := filepath.Glob("/sys/class/input/event*/device/name")
	found := 0
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil || strings.TrimSpace(string(b)) != "Power Button" {
			continue
		}
		dev := "/dev/input/" + filepath.Base(filepath.Dir(filepath.Dir(n)))
		f, err := os.Open(dev)
		if err != nil {
			logf("power button %s: %v", dev, err)
			continue
		}
		found++
		go readPowerButton(f)
	}
	if found == 0 {
		logf("power button: no ACPI power button device; system_powerdown will not work")
		return
	}
	logf("power button: watching %d device(s)", found)
}

// readPowerButton reads struct input_event records (24 bytes on 64-bit:
// struct timeval, __u16 type, __u16 code, __s32 value).
func readPowerButton(f *os.File) {
	buf := make([]byte, 24)
	for {
		if _, err := f.Read(buf); err != nil {
			logf("power button %s: %v", f.Name(), err)
			return
		}
		typ := binary.LittleEndian.Uint16(buf[16:])
		code := binary.LittleEndian.Uint16(buf[18:])
		value := int32(binary.LittleEndian.Uint32(buf[20:]))
		if typ == evKey && code == keyPower && value == 1 {
			powerOff("ACPI power button")
		}
	}
}

// powerOff flushes and powers the machine off (or reboots). As PID 1 no
// process is left to clean up after: guest-exec children just die with it.
func powerOff(why string) {
	powerAction(why, unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func powerAction(why string, cmd int) {
	logf("%s: powering off", why)
	unix.Sync()
	// Give the console line a moment to leave the UART; nothing waits on it.
	time.Sleep(50 * time.Millisecond)
	if err := unix.Reboot(cmd); err != nil {
		logf("reboot(%#x): %v", cmd, err)
	}
}
