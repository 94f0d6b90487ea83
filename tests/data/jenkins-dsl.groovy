// A stub of Jenkins' declarative pipeline DSL, enough to run the project's Jenkinsfile outside Jenkins:
// every step is recorded (one line per event on stdout), every block's closure is run, `parallel` runs
// each branch. args: the Jenkinsfile, then NAME=VALUE build parameters.
import org.codehaus.groovy.control.CompilerConfiguration

abstract class PipelineStub extends Script {
    def methodMissing(String name, args) {
        def list = args as List
        switch (name) {
            case 'stage': println "STAGE ${list[0]}"; break
            case 'sh': println "SH ${list[0]}"; break
            case 'echo': println "ECHO ${list[0]}"; break
            case 'error': throw new RuntimeException("error: ${list[0]}")
            case 'parallel':
                list[0].each { branch, body -> println "BRANCH ${branch}"; body.call() }
                return null
            default:
                def named = list.find { it instanceof Map }
                println "STEP ${name}" + (named ? " ${named}" : (list && !(list[0] instanceof Closure) ? " ${list[0]}" : ''))
        }
        list.findAll { it instanceof Closure }.each { it.call() }
        return null
    }
}

def file = new File(args[0])
def params = args.drop(1).collectEntries { def kv = it.split('=', 2); [(kv[0]): kv[1]] }
def defaults = [TARGETS: 'all', XEN: '', KERNEL: '', FARM: '', PLACE: '', BOARD: '']
def binding = new Binding(params: defaults + params, env: [JOB_NAME: 'nightly', HOME: '/home/jenkins'], scm: 'scm')
def config = new CompilerConfiguration()
config.scriptBaseClass = PipelineStub.name
new GroovyShell(this.class.classLoader, binding, config).evaluate(file)
println "END"
