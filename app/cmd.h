/* cmd.h - the subcommands of the cellm binary. Each takes the arguments
 * after its own name (argv[0] is the subcommand) and returns the process
 * exit code. Only app/ parses argv or calls exit(). */
#ifndef CM_APP_CMD_H
#define CM_APP_CMD_H

int cmd_run(int argc, char **argv);         /* cmd_run.c */
int cmd_logits(int argc, char **argv);      /* cmd_run.c */
int cmd_tokenize(int argc, char **argv);    /* cmd_tokenize.c */
int cmd_model(int argc, char **argv);       /* cmd_model.c: info, synth; passes import-tokenizer on */
int cmd_model_import_tokenizer(int argc, char **argv); /* cmd_import.c */
int cmd_bench(int argc, char **argv);       /* cmd_bench.c */
int cmd_serve(int argc, char **argv);       /* cmd_serve.c */
int cmd_key(int argc, char **argv);         /* cmd_xfer.c */
int cmd_xfer_bench(int argc, char **argv);  /* cmd_xfer.c */

#endif
