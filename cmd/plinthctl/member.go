package main

import (
	"context"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// memberChange is the answer to member add, remove, update or promote.
type memberChange struct {
	// resp is the server's answer: a *pb.MemberAddResponse,
	// *pb.MemberRemoveResponse, *pb.MemberUpdateResponse or
	// *pb.MemberPromoteResponse.
	resp proto.Message
	// id is the member the command named (remove, update, promote).
	id uint64
	// name and peerURLs are the arguments of member add, for the
	// environment lines it prints.
	name, peerURLs string
}

func (c memberChange) header() *pb.ResponseHeader {
	if h, ok := c.resp.(interface{ GetHeader() *pb.ResponseHeader }); ok {
		return h.GetHeader()
	}
	return nil
}

func (a *app) memberCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "member <subcommand>",
		Short: "Membership related commands",
	}
	cmd.AddCommand(a.memberListCommand(), a.memberAddCommand(), a.memberRemoveCommand(),
		a.memberUpdateCommand(), a.memberPromoteCommand())
	return cmd
}

func (a *app) memberListCommand() *cobra.Command {
	var consistency string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Lists all members in the cluster",
		Long: `When --write-out is set to simple, this command prints out comma-separated member lists for each endpoint.
The items in the lists are ID, Status, Name, Peer Addrs, Client Addrs, Is Learner.
`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts []clientv3.OpOption
			switch consistency {
			case "l":
			case "s":
				opts = append(opts, clientv3.WithSerializable())
			default:
				return badFeature("unknown consistency flag %q", consistency)
			}
			p, err := a.printer()
			if err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := c.MemberList(ctx, opts...)
				if err != nil {
					return err
				}
				return p.memberList((*pb.MemberListResponse)(resp))
			})
		},
	}
	cmd.Flags().StringVar(&consistency, "consistency", "l", "Linearizable(l) or Serializable(s)")
	return cmd
}

// changePrinter is the printer for a membership change. etcdctl has no table
// or fields output for these and says so after the change is made; plinthctl
// says so before it sends anything.
func (a *app) changePrinter() (printer, error) {
	switch a.writeOut {
	case "table":
		return nil, errTableUnsupported
	case "fields":
		return nil, errFieldsUnsupported
	}
	return a.printer()
}

func (a *app) memberAddCommand() *cobra.Command {
	var peerURLs string
	var learner bool
	cmd := &cobra.Command{
		Use:   "add <memberName> [options]",
		Short: "Adds a member into the cluster",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 {
				return badArgs("member name not provided")
			}
			if len(args) > 1 {
				msg := "too many arguments"
				for _, s := range args {
					if strings.HasPrefix(strings.ToLower(s), "http") {
						msg += ", did you mean --peer-urls=" + s
					}
				}
				return badArgs("%s", msg)
			}
			if peerURLs == "" {
				return badArgs("member peer urls not provided")
			}
			p, err := a.changePrinter()
			if err != nil {
				return err
			}
			urls := strings.Split(peerURLs, ",")
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				add := c.MemberAdd
				if learner {
					add = c.MemberAddAsLearner
				}
				resp, err := add(ctx, urls)
				if err != nil {
					return err
				}
				return p.memberChange(memberChange{resp: (*pb.MemberAddResponse)(resp), name: args[0], peerURLs: peerURLs})
			})
		},
	}
	cmd.Flags().StringVar(&peerURLs, "peer-urls", "", "comma separated peer URLs for the new member.")
	cmd.Flags().BoolVar(&learner, "learner", false, "indicates if the new member is raft learner")
	return cmd
}

// memberID parses the one argument of remove, update and promote: a member
// ID in hex, as member list prints it.
func memberID(args []string) (uint64, error) {
	if len(args) != 1 {
		return 0, badArgs("member ID is not provided")
	}
	id, err := strconv.ParseUint(args[0], 16, 64)
	if err != nil {
		return 0, badArgs("bad member ID arg (%v), expecting ID in Hex", err)
	}
	return id, nil
}

func (a *app) memberRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "remove <memberID>",
		Short: "Removes a member from the cluster",
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := memberID(args)
			if err != nil {
				return err
			}
			p, err := a.changePrinter()
			if err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := c.MemberRemove(ctx, id)
				if err != nil {
					return err
				}
				return p.memberChange(memberChange{resp: (*pb.MemberRemoveResponse)(resp), id: id})
			})
		},
	}
}

func (a *app) memberUpdateCommand() *cobra.Command {
	var peerURLs string
	cmd := &cobra.Command{
		Use:   "update <memberID> [options]",
		Short: "Updates a member in the cluster",
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := memberID(args)
			if err != nil {
				return err
			}
			if peerURLs == "" {
				return badArgs("member peer urls not provided")
			}
			p, err := a.changePrinter()
			if err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := c.MemberUpdate(ctx, id, strings.Split(peerURLs, ","))
				if err != nil {
					return err
				}
				return p.memberChange(memberChange{resp: (*pb.MemberUpdateResponse)(resp), id: id})
			})
		},
	}
	cmd.Flags().StringVar(&peerURLs, "peer-urls", "", "comma separated peer URLs for the updated member.")
	return cmd
}

func (a *app) memberPromoteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "promote <memberID>",
		Short: "Promotes a non-voting member in the cluster",
		Long:  "Promotes a non-voting learner member to a voting one in the cluster.\n",
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := memberID(args)
			if err != nil {
				return err
			}
			p, err := a.changePrinter()
			if err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *clientv3.Client) error {
				resp, err := c.MemberPromote(ctx, id)
				if err != nil {
					return err
				}
				return p.memberChange(memberChange{resp: (*pb.MemberPromoteResponse)(resp), id: id})
			})
		},
	}
}
