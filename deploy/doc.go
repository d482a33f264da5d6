// Package deploy holds what installs sgsim on a host: the systemd unit sgsim.service. It has no code;
// its test checks the unit with systemd-analyze and against the sgsim binary's flags.
package deploy
